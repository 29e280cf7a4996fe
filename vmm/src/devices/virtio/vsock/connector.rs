//! The host's handle for opening streams to guest ports.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::muxer::ConnectRequest;

/// Opens streams to guest vsock ports; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct VsockConnector {
    requests: Sender<ConnectRequest>,
    wake: Arc<EventFd>,
}

impl VsockConnector {
    pub(super) fn new(requests: Sender<ConnectRequest>, wake: Arc<EventFd>) -> VsockConnector {
        VsockConnector { requests, wake }
    }

    /// Connects to guest `port`; the returned stream carries the connection's
    /// bytes. Fails with `ConnectionRefused` if nothing listens there, or
    /// `TimedOut` if the guest does not answer within `timeout`.
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let (waiter, answer) = channel();
        self.submit(ConnectRequest {
            stream: theirs,
            port,
            waiter: Some(waiter),
            announce: false,
        })?;
        match answer.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(ours),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the guest did not answer on vsock port {port} within {timeout:?}"),
            )),
        }
    }

    /// Hands `stream` (a Unix-socket client) to the device: once the guest
    /// accepts on `port`, `OK <host port>\n` is written to it and bytes flow.
    pub fn attach(&self, stream: UnixStream, port: u32) -> io::Result<()> {
        self.submit(ConnectRequest {
            stream,
            port,
            waiter: None,
            announce: true,
        })
    }

    fn submit(&self, request: ConnectRequest) -> io::Result<()> {
        self.requests
            .send(request)
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "the VM has stopped"))?;
        self.wake.write(1)
    }
}
