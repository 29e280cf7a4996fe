//! Framing: each message is a 4-byte big-endian length, then that many bytes
//! of JSON. Oversized or malformed frames are errors, never panics.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame either side accepts (file data moves in smaller chunks).
pub const MAX_FRAME_LEN: usize = 8 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("transport: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether the stream is still aligned on a frame boundary, so that the
    /// peer can be told and the conversation go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::Malformed(_))
    }
}

/// Encodes one message as a frame.
pub fn encode(message: &impl Serialize) -> Result<Vec<u8>, FrameError> {
    let payload = serde_json::to_vec(message)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Writes one message.
pub fn write(writer: &mut impl Write, message: &impl Serialize) -> Result<(), FrameError> {
    writer.write_all(&encode(message)?)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame's payload; `None` at a clean end of stream. A too-large
/// length is refused before anything is allocated.
pub fn read_payload(reader: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Reads and decodes one message; `None` at a clean end of stream.
pub fn read<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, FrameError> {
    match read_payload(reader)? {
        Some(payload) => Ok(Some(serde_json::from_slice(&payload)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Op, Request};

    #[test]
    fn round_trip() {
        let request = Request {
            id: 7,
            op: Op::Execute {
                context: "default".into(),
                code: "1 + 1".into(),
                env: Default::default(),
                timeout_ms: Some(1000),
            },
        };
        let bytes = encode(&request).unwrap();
        let back: Request = read(&mut bytes.as_slice()).unwrap().unwrap();
        assert_eq!(back, request);
        assert!(
            read::<Request>(&mut &[][..]).unwrap().is_none(),
            "clean EOF"
        );
    }

    #[test]
    fn oversized_lengths_are_refused_without_allocating() {
        let err = read::<Request>(&mut &[0xff, 0xff, 0xff, 0xff][..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
        assert!(!err.is_recoverable());
    }

    #[test]
    fn garbage_is_malformed_and_recoverable() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{oops");
        let err = read::<Request>(&mut bytes.as_slice()).unwrap_err();
        assert!(err.is_recoverable(), "{err}");
    }

    #[test]
    fn truncated_frames_are_io_errors() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(
            read::<Request>(&mut bytes.as_slice()),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no extra dependency, reproducible.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (state % 64) as usize;
            let mut bytes = Vec::with_capacity(len + 4);
            for _ in 0..len + 4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            if state.is_multiple_of(2) {
                let body = (len as u32).to_be_bytes();
                bytes[..4].copy_from_slice(&body);
            }
            let _ = read::<Request>(&mut bytes.as_slice());
        }
    }
}
