//! The Unix-socket convention for outside tools: a client connects to the
//! socket, writes `CONNECT <port>\n`, and once the guest accepts reads
//! `OK <host port>\n`; after that the socket is the stream.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::VsockConnector;

/// Longest handshake line accepted.
const MAX_LINE: usize = 32;

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &str) -> Option<u32> {
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Serves `path` until `stop` is set; each client is handed to `connector`.
pub fn serve(
    path: &Path,
    connector: VsockConnector,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    crate::seccomp::spawn_filtered("vsock-unix", crate::seccomp::ThreadKind::Io, move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = handshake(stream, &connector) {
                        tracing::debug!("vsock Unix client refused: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&listener),
                Err(e) => tracing::debug!("vsock Unix accept failed: {e}"),
            }
        }
    })
}

fn handshake(mut stream: UnixStream, connector: &VsockConnector) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    // Byte by byte: whatever follows the newline belongs to the stream.
    while line.len() < MAX_LINE {
        stream.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            let port = parse_connect(&String::from_utf8_lossy(&line)).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "expected CONNECT <port>")
            })?;
            stream.set_read_timeout(None)?;
            return connector.attach(stream, port);
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "handshake line too long",
    ))
}

fn wait_readable(listener: &UnixListener) {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call.
    unsafe { libc::poll(&mut fd, 1, 100) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect("CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect("CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect("CONNECT"), None);
        assert_eq!(parse_connect("CONNECT -1"), None);
        assert_eq!(parse_connect("connect 5"), None);
        assert_eq!(parse_connect("CONNECT 99999999999"), None);
    }
}
