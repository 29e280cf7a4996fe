//! Connections that a response can end with a reset (TCP RST), the way a
//! connection through E2B's edge ends when its sandbox's VM goes. The SDKs
//! take a reset mid-request for a transport failure, ask whether the sandbox
//! still runs, and then say it was killed; a plain close of an HTTP/1.1
//! response is a protocol error to them instead.
//!
//! [`ResettingListener`] accepts [`Resettable`] connections (plain or TLS,
//! [`super::tls::MaybeTls`]); each request
//! carries its connection's [`Reset`] as `ConnectInfo` (the app is served
//! with `into_make_service_with_connect_info::<Reset>()`), which handlers
//! take as an extractor.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::tls::MaybeTls;

/// Accepts connections that may be reset; no Nagle delay on them (small
/// writes, JSON lines and stream frames, go at once). With an acceptor,
/// connections that open with a TLS handshake are served over TLS.
pub struct ResettingListener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ResettingListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResettingListener")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ResettingListener {
    /// The port it listens on (the one the kernel chose for port 0).
    pub fn local_port(&self) -> crate::error::Result<u16> {
        let address = self.listener.local_addr();
        address
            .map(|a| a.port())
            .map_err(|e| crate::error::Error::io("reading the listening address", e))
    }
}

impl Listener for ResettingListener {
    type Io = Resettable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Resettable, SocketAddr) {
        let (stream, peer) = Listener::accept(&mut self.listener).await;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY");
        }
        let io = Resettable {
            stream: MaybeTls::new(stream, self.tls.clone()),
            reset: Arc::default(),
        };
        (io, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that ends with a reset once its [`Reset`] was asked to.
#[derive(Debug)]
pub struct Resettable {
    stream: MaybeTls,
    reset: Arc<AtomicBool>,
}

impl Drop for Resettable {
    fn drop(&mut self) {
        if let Some(tcp) = self.stream.tcp()
            && self.reset.load(Ordering::SeqCst)
        {
            // Lingering for no time makes the close a reset (and cannot block).
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(tcp, nix::sys::socket::sockopt::Linger, &linger);
        }
    }
}

/// A request's handle on its connection: [`Reset::reset`] makes the
/// connection end with a reset when it closes.
#[derive(Debug, Clone, Default)]
pub struct Reset(Arc<AtomicBool>);

impl Reset {
    pub fn reset(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The request's connection's; one that resets nothing where the request
/// came some other way (a test's `oneshot`).
impl<S: Send + Sync> FromRequestParts<S> for Reset {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Reset, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ConnectInfo<Reset>>()
            .map(|info| info.0.clone())
            .unwrap_or_default())
    }
}

impl Connected<IncomingStream<'_, ResettingListener>> for Reset {
    fn connect_info(stream: IncomingStream<'_, ResettingListener>) -> Reset {
        Reset(stream.io().reset.clone())
    }
}

impl AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resettable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No orderly end (FIN) before the reset.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
