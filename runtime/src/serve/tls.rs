//! HTTPS on the API port, beside plain HTTP: a connection whose first byte
//! opens a TLS handshake ([`MaybeTls`]) gets a certificate for the name it
//! asks for, issued on the spot by the server's own certificate authority
//! ([`crate::tls::CertAuthority::open`], kept in the server's data folder as
//! `tls/ca.pem`; it signs only names under `localhost` and loopback
//! addresses). With it `https://{port}-{id}.localhost:49980`, the URL E2B's
//! SDKs build from `get_host(port)`, reaches a sandbox's server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A connection that is plain HTTP or TLS, as its first byte says; the TLS
/// handshake happens on the connection's own task, not the accept loop's.
pub enum MaybeTls {
    /// Not read from yet.
    Sniffing(TcpStream, Option<TlsAcceptor>),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed.
    Broken,
}

impl std::fmt::Debug for MaybeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaybeTls::Sniffing(..) => "MaybeTls::Sniffing",
            MaybeTls::Handshaking(_) => "MaybeTls::Handshaking",
            MaybeTls::Plain(_) => "MaybeTls::Plain",
            MaybeTls::Tls(_) => "MaybeTls::Tls",
            MaybeTls::Broken => "MaybeTls::Broken",
        })
    }
}

impl MaybeTls {
    /// A connection that may turn out to be TLS if `acceptor` is given.
    pub fn new(stream: TcpStream, acceptor: Option<TlsAcceptor>) -> MaybeTls {
        MaybeTls::Sniffing(stream, acceptor)
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Sniffing(stream, _) | MaybeTls::Plain(stream) => Some(stream),
            MaybeTls::Handshaking(accept) => accept.get_ref(),
            MaybeTls::Tls(tls) => Some(tls.get_ref().0),
            MaybeTls::Broken => None,
        }
    }

    /// Finds out what the connection is and finishes a TLS handshake.
    fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                MaybeTls::Sniffing(stream, acceptor) => {
                    let mut first = [0u8; 1];
                    let mut peeked = ReadBuf::new(&mut first);
                    if acceptor.is_some() {
                        ready!(stream.poll_peek(cx, &mut peeked))?;
                    }
                    let tls = peeked.filled() == [crate::tls::TLS_HANDSHAKE];
                    let MaybeTls::Sniffing(stream, acceptor) =
                        std::mem::replace(self, MaybeTls::Broken)
                    else {
                        unreachable!("matched above");
                    };
                    *self = match (tls, acceptor) {
                        (true, Some(acceptor)) => {
                            MaybeTls::Handshaking(Box::new(acceptor.accept(stream)))
                        }
                        _ => MaybeTls::Plain(stream),
                    };
                }
                MaybeTls::Handshaking(accept) => {
                    let done = ready!(Pin::new(&mut **accept).poll(cx));
                    *self = match done {
                        Ok(tls) => MaybeTls::Tls(Box::new(tls)),
                        Err(e) => {
                            *self = MaybeTls::Broken;
                            return Poll::Ready(Err(e));
                        }
                    };
                }
                MaybeTls::Broken => {
                    return Poll::Ready(Err(io::Error::other("the TLS handshake failed")));
                }
                MaybeTls::Plain(_) | MaybeTls::Tls(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    /// The established stream.
    fn io(&mut self) -> Pin<&mut (dyn Io + Unpin)> {
        match self {
            MaybeTls::Plain(stream) => Pin::new(stream),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls),
            _ => unreachable!("called once established"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> Io for T {}

impl AsyncRead for MaybeTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_established(cx))?;
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_established(cx))?;
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_established(cx))?;
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_established(cx))?;
        self.io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertAuthority, provider};
    use std::sync::Arc;

    /// One port, both kinds of connection; TLS verified against the CA
    /// (name constraints included) as a client that trusts it does.
    #[tokio::test]
    async fn tls_and_plain_connections_share_a_port() {
        use rustls::pki_types::ServerName;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertAuthority::open(dir.path()).unwrap());
        let acceptor = ca.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut conn = MaybeTls::new(stream, Some(acceptor.clone()));
                tokio::spawn(async move {
                    let mut word = [0u8; 4];
                    if conn.read_exact(&mut word).await.is_ok() {
                        let _ = conn.write_all(&word.to_ascii_uppercase()).await;
                        let _ = conn.shutdown().await;
                    }
                });
            }
        });
        let mut plain = TcpStream::connect(address).await.unwrap();
        plain.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        plain.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"PING");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let talk = |name: &'static str| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                let name = ServerName::try_from(name).map_err(io::Error::other)?;
                let mut tls = connector.connect(name, tcp).await?;
                tls.write_all(b"ping").await?;
                let mut answer = [0u8; 4];
                tls.read_exact(&mut answer).await?;
                Ok::<_, io::Error>(answer)
            }
        };
        for name in ["8000-abc123.localhost", "localhost", "127.0.0.1"] {
            assert_eq!(&talk(name).await.unwrap(), b"PING", "{name}");
        }
        assert!(
            talk("example.com").await.is_err(),
            "no certificate for other names"
        );
    }
}
