//! The host's end of a tunnel to a server in the guest ([`Op::OpenPort`]):
//! a byte stream, as if connected to the port itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cellbox_guest_init::protocol::{Op, PORT_CHUNK, ReplyBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::client::{GuestClient, Replies, died, failure};
use crate::error::Result;

/// Bytes buffered each way between the caller and the tunnel.
const BUFFER: usize = 64 << 10;

impl GuestClient {
    /// Connects to `port` on the guest's loopback: a stream to the server
    /// listening there ([`crate::Error::NotFound`] if none does). The guest
    /// closes the tunnel once the server stops sending; dropping the stream
    /// closes it too.
    pub async fn open_port(&self, port: u16) -> Result<DuplexStream> {
        let mut replies = self.request(Op::OpenPort { port }).await?;
        let tunnel = match replies.recv().await {
            Some(ReplyBody::PortOpened { tunnel }) => tunnel,
            Some(other) => return Err(failure(other)),
            None => return Err(died("the guest closed the connection opening a port")),
        };
        let (ours, theirs) = tokio::io::duplex(BUFFER);
        let (from_caller, to_caller) = tokio::io::split(ours);
        tokio::spawn(from_guest(self.clone(), tunnel, replies, to_caller));
        tokio::spawn(to_guest(self.clone(), tunnel, from_caller));
        Ok(theirs)
    }
}

/// Passes what the server sends on to the caller, acknowledging each piece
/// once the caller has room for it (so the guest sends no further ahead).
async fn from_guest(
    client: GuestClient,
    tunnel: u32,
    mut replies: Replies,
    mut to_caller: WriteHalf<DuplexStream>,
) {
    // Ends with the server's end of sending (or a broken tunnel).
    while let Some(ReplyBody::PortData { data }) = replies.recv().await {
        let Ok(bytes) = BASE64.decode(data) else {
            break;
        };
        if to_caller.write_all(&bytes).await.is_err() {
            break; // the caller went away
        }
        // Once the server has stopped sending, the guest has closed the
        // tunnel while its last pieces were on their way: no ack is due.
        let _ = client.done(Op::PortAck { tunnel, chunks: 1 }).await;
    }
    let _ = to_caller.shutdown().await;
    // Closed already unless the caller went away or the data was garbled.
    let _ = client.done(Op::ClosePort { tunnel }).await;
}

/// Passes what the caller writes on to the server; the caller's end of
/// writing ends the server's input.
async fn to_guest(client: GuestClient, tunnel: u32, mut from_caller: ReadHalf<DuplexStream>) {
    let mut buffer = vec![0; PORT_CHUNK];
    loop {
        let (data, eof) = match from_caller.read(&mut buffer).await {
            Ok(0) | Err(_) => (String::new(), true),
            Ok(n) => (BASE64.encode(&buffer[..n]), false),
        };
        let sent = client.done(Op::PortSend { tunnel, data, eof }).await;
        if eof || sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use std::time::Duration;

    use cellbox_guest_init::contexts::Contexts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::GuestClient;

    /// guest-init's protocol server in this process, and a client of it.
    async fn guest() -> GuestClient {
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let contexts = Arc::new(Contexts::new("/nonexistent/python3", None, "/tmp"));
        let guest = std::fs::File::from(OwnedFd::from(guest));
        std::thread::spawn(move || cellbox_guest_init::server::serve(guest, contexts, None));
        host.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host).unwrap();
        GuestClient::connect(host, Duration::from_secs(5))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_server_sending_in_small_pieces_is_passed_on_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut asked = [0u8; 5];
            peer.read_exact(&mut asked).unwrap();
            assert_eq!(&asked, b"hello");
            // Many more pieces than the window and the reply queue hold.
            for i in 0..2000u32 {
                peer.write_all(&i.to_le_bytes().repeat(64)).unwrap();
            }
        });
        let client = guest().await;
        let mut stream = client.open_port(port).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut received = Vec::new();
        let read = stream.read_to_end(&mut received);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the data keeps coming")
            .unwrap();
        let sent: Vec<u8> = (0..2000u32)
            .flat_map(|i| i.to_le_bytes().repeat(64))
            .collect();
        assert!(
            received == sent,
            "{} of {} bytes",
            received.len(),
            sent.len()
        );
        server.join().unwrap();
        // The connection still serves other requests.
        assert!(client.list_commands().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_not_found() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = guest().await.open_port(port).await.unwrap_err();
        assert!(matches!(refused, crate::Error::NotFound(_)), "{refused:?}");
    }
}
