//! Files in the guest through `guest-init`'s file operations, moved in
//! chunks of [`FILE_CHUNK`] so that no message outgrows a frame and no file
//! is held whole in memory on either side.
//!
//! Paths are the guest's, best absolute (relative ones are taken from
//! guest-init's working folder, `/`).

use std::collections::VecDeque;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cellbox_guest_init::protocol::{FILE_CHUNK, FileStat, Op, ReplyBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::GuestClient;
use super::client::{Replies, failure};
use crate::error::{Error, Result};

/// How many chunk reads are in flight at once while reading a file.
const READ_AHEAD: usize = 4;

fn closed() -> Error {
    Error::SandboxDied {
        reason: "the guest closed the connection during a file transfer".into(),
    }
}

/// Collects the chunks of one ranged read.
async fn chunk(replies: &mut Replies) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        match replies.recv().await.ok_or_else(closed)? {
            ReplyBody::FileChunk { data, eof } => {
                let decoded = BASE64.decode(data).map_err(|e| Error::SandboxDied {
                    reason: format!("the guest sent file data that is not base64: {e}"),
                })?;
                bytes.extend_from_slice(&decoded);
                if eof {
                    return Ok(bytes);
                }
            }
            other => return Err(failure(other)),
        }
    }
}

impl GuestClient {
    /// Writes `data` to `path` in the guest (created or truncated; missing
    /// parent folders are created).
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut data = data;
        self.write_file_from(path, &mut data).await.map(drop)
    }

    /// Writes everything `input` yields to `path` in the guest (created or
    /// truncated, parents created), one [`FILE_CHUNK`] at a time; returns
    /// the number of bytes written.
    pub async fn write_file_from(
        &self,
        path: &str,
        input: &mut (impl AsyncRead + Unpin),
    ) -> Result<u64> {
        let mut buffer = vec![0u8; FILE_CHUNK];
        let mut written = 0u64;
        let mut append = false;
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                match input.read(&mut buffer[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        return Err(Error::io(format!("reading the data for {path}"), e));
                    }
                }
            }
            // The first request is sent even for no data: it creates the file.
            if filled > 0 || !append {
                let op = Op::WriteFile {
                    path: path.to_string(),
                    data: BASE64.encode(&buffer[..filled]),
                    append,
                };
                match self.call(op).await? {
                    ReplyBody::Done => {}
                    other => return Err(failure(other)),
                }
                written += filled as u64;
                append = true;
            }
            if filled < buffer.len() {
                return Ok(written);
            }
        }
    }

    /// The whole content of `path` in the guest.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_file_to(path, &mut out).await?;
        Ok(out)
    }

    /// Streams `path` in the guest into `out`, a chunk at a time (a few
    /// chunks are asked for ahead); returns the number of bytes copied.
    pub async fn read_file_to(
        &self,
        path: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64> {
        let chunk_len = FILE_CHUNK as u64;
        let mut in_flight = VecDeque::new();
        let mut next_offset = 0u64;
        let mut copied = 0u64;
        loop {
            while in_flight.len() < READ_AHEAD {
                let op = Op::ReadFile {
                    path: path.to_string(),
                    offset: next_offset,
                    length: Some(chunk_len),
                };
                in_flight.push_back(self.request(op).await?);
                next_offset += chunk_len;
            }
            let Some(mut replies) = in_flight.pop_front() else {
                break;
            };
            let bytes = chunk(&mut replies).await?;
            out.write_all(&bytes)
                .await
                .map_err(|e| Error::io(format!("writing out {path}"), e))?;
            copied += bytes.len() as u64;
            if (bytes.len() as u64) < chunk_len {
                break; // the end of the file; later reads are dropped unread
            }
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing out {path}"), e))?;
        Ok(copied)
    }

    /// Copies the host file `host_path` to `guest_path` (parents created),
    /// streaming; returns the number of bytes copied.
    pub async fn upload(&self, host_path: impl AsRef<Path>, guest_path: &str) -> Result<u64> {
        let host_path = host_path.as_ref();
        let mut file = tokio::fs::File::open(host_path)
            .await
            .map_err(|e| Error::io(format!("opening {}", host_path.display()), e))?;
        self.write_file_from(guest_path, &mut file).await
    }

    /// Copies `guest_path` to the host file `host_path` (created or
    /// truncated), streaming; returns the number of bytes copied. Nothing is
    /// created on the host when the guest file is missing.
    pub async fn download(&self, guest_path: &str, host_path: impl AsRef<Path>) -> Result<u64> {
        let host_path = host_path.as_ref();
        if self.stat(guest_path).await?.is_dir {
            return Err(Error::InvalidArgument(format!(
                "{guest_path} is a folder, not a file"
            )));
        }
        let mut file = tokio::fs::File::create(host_path)
            .await
            .map_err(|e| Error::io(format!("creating {}", host_path.display()), e))?;
        let copied = self.read_file_to(guest_path, &mut file).await?;
        file.sync_all()
            .await
            .map_err(|e| Error::io(format!("writing {}", host_path.display()), e))?;
        Ok(copied)
    }

    /// The entries of the folder `path`, sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileStat>> {
        match self.call(Op::ListDir { path: path.into() }).await? {
            ReplyBody::Entries { entries } => Ok(entries),
            other => Err(failure(other)),
        }
    }

    /// Creates the folder `path` and any missing parents (no error if it
    /// exists).
    pub async fn make_dir(&self, path: &str) -> Result<()> {
        self.done(Op::MakeDir { path: path.into() }).await
    }

    /// Removes a file, or a folder with everything in it.
    pub async fn remove(&self, path: &str) -> Result<()> {
        self.done(Op::Remove { path: path.into() }).await
    }

    /// Renames (moves) `from` to `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.done(Op::Rename {
            from: from.into(),
            to: to.into(),
        })
        .await
    }

    /// What is at `path` (a symbolic link is described, not followed).
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        match self.call(Op::Stat { path: path.into() }).await? {
            ReplyBody::Stat(stat) => Ok(*stat),
            other => Err(failure(other)),
        }
    }

    /// Keeps string pairs on the file at `path` (its `metadata` from then on).
    pub async fn set_metadata(
        &self,
        path: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let (path, metadata) = (path.to_string(), metadata.clone());
        self.done(Op::SetMetadata { path, metadata }).await
    }

    /// Whether anything is at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends a request answered with [`ReplyBody::Done`].
    pub(crate) async fn done(&self, op: Op) -> Result<()> {
        match self.call(op).await? {
            ReplyBody::Done => Ok(()),
            other => Err(failure(other)),
        }
    }
}
