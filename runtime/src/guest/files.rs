//! Files in the guest through `guest-init`'s file operations, moved in
//! chunks of [`FILE_CHUNK`] so that no message outgrows a frame.

use base64::Engine as _;
use cellbox_guest_init::protocol::{FILE_CHUNK, Op, ReplyBody};

use super::GuestClient;
use super::client::failure;
use crate::error::Result;

impl GuestClient {
    /// Writes `data` to `path` in the guest (created or truncated).
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut chunks = data.chunks(FILE_CHUNK).peekable();
        let mut append = false;
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let op = Op::WriteFile {
                path: path.to_string(),
                data: base64::engine::general_purpose::STANDARD.encode(chunk),
                append,
            };
            match self.call(op).await? {
                ReplyBody::Done => {}
                other => return Err(failure(other)),
            }
            append = true;
            if chunks.peek().is_none() {
                return Ok(());
            }
        }
    }
}
