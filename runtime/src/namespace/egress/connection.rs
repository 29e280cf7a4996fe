//! One connection through a sandbox's egress proxy: where it was going
//! (the original destination the redirect kept), then TLS or plain HTTP.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{EgressPolicy, HANDSHAKE_TIMEOUT, Shared};

/// The most a ClientHello may take before the proxy gives up on it.
const MAX_HELLO: usize = 64 * 1024;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Where a connection was going, and the TLS server name it asked for
/// when the proxy opened its TLS.
#[derive(Debug, Clone)]
struct Origin {
    destination: SocketAddr,
    tls_name: Option<String>,
}

pub(super) async fn handle(stream: TcpStream, shared: Arc<Shared>) {
    let Ok(destination) = original_destination(&stream) else {
        return;
    };
    // Connected to the proxy's own socket, not redirected to it.
    if destination.ip().is_loopback() {
        return;
    }
    let mut first = [0u8; 1];
    match timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let origin = Origin {
        destination,
        tls_name: None,
    };
    if first[0] == crate::tls::TLS_HANDSHAKE {
        if let Err(e) = tls(stream, origin, shared).await {
            tracing::debug!("egress TLS to {destination}: {e}");
        }
    } else {
        serve_http(stream, origin, shared).await;
    }
}

/// The destination a redirected connection had (`SO_ORIGINAL_DST`).
fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let address = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(address.sin_port))))
}

/// A TLS connection: passed through to its server name's host, or opened
/// here when a rule changes that host's requests.
async fn tls(mut stream: TcpStream, origin: Origin, shared: Arc<Shared>) -> io::Result<()> {
    let (hello, name) = read_client_hello(&mut stream).await?;
    let policy = shared.policy();
    // A name that is an address names none (SNI carries names only).
    let name = name.filter(|n| n.parse::<IpAddr>().is_err());
    if let Some(name) = name.as_ref().filter(|name| policy.changes(name)) {
        let origin = Origin {
            tls_name: Some(name.clone()),
            ..origin
        };
        let opened = timeout(
            HANDSHAKE_TIMEOUT,
            shared.acceptor.accept(Rewind::new(hello, stream)),
        )
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        serve_http(opened, origin, shared).await;
        return Ok(());
    }
    let port = origin.destination.port();
    let Some(address) = destination(
        &shared,
        &policy,
        name.as_deref(),
        origin.destination.ip(),
        port,
    )
    .await
    else {
        return Err(io::Error::other(format!(
            "{} is not allowed",
            name.as_deref().unwrap_or("an unnamed server")
        )));
    };
    let mut server = dial(address).await?;
    server.write_all(&hello).await?;
    tokio::io::copy_bidirectional(&mut stream, &mut server).await?;
    Ok(())
}

/// Reads a TLS ClientHello; returns the bytes read and its server name.
async fn read_client_hello(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while seen.len() < MAX_HELLO {
        let read = timeout(HANDSHAKE_TIMEOUT, stream.read(&mut buffer))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buffer[..read]);
        acceptor.read_tls(&mut &buffer[..read])?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok((seen, name));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(io::Error::other(e)),
        }
    }
    Err(io::Error::other("a TLS ClientHello too long"))
}

/// Where a connection for `name` (or, naming none, to `address`) may go:
/// the first of the name's addresses, resolved here, that the rules admit.
async fn destination(
    shared: &Shared,
    policy: &EgressPolicy,
    name: Option<&str>,
    address: IpAddr,
    port: u16,
) -> Option<SocketAddr> {
    let Some(name) = name else {
        return policy
            .admits(None, address)
            .then_some(SocketAddr::new(address, port));
    };
    if let Ok(literal) = name.parse::<IpAddr>() {
        return policy
            .admits(None, literal)
            .then_some(SocketAddr::new(literal, port));
    }
    let resolved = super::resolve(shared, name, port).await?;
    resolved
        .into_iter()
        .filter(|a| policy.admits(Some(name), a.ip()))
        .min_by_key(|a| a.is_ipv6())
}

async fn dial(address: SocketAddr) -> io::Result<TcpStream> {
    timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// HTTP/1 from the sandbox: each request checked, changed and sent on.
async fn serve_http<S>(stream: S, origin: Origin, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let (origin, shared) = (origin.clone(), shared.clone());
        async move { Ok::<_, Infallible>(forward(request, &origin, &shared).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("an egress HTTP connection ended: {e}");
    }
}

/// The host a request names (`Host`, without its port), lower case.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    let host = match request.headers().get(HOST) {
        Some(value) => value.to_str().ok()?.to_owned(),
        None => request.uri().host()?.to_owned(),
    };
    let host = host.trim().to_ascii_lowercase();
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?.to_owned(),
        None => host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_owned(),
    };
    (!bare.is_empty()).then(|| bare.trim_end_matches('.').to_owned())
}

async fn forward(
    mut request: Request<Incoming>,
    origin: &Origin,
    shared: &Shared,
) -> Response<ProxyBody> {
    let policy = shared.policy();
    let host = request_host(&request);
    if let (Some(tls_name), Some(host)) = (&origin.tls_name, &host)
        && tls_name != host
    {
        let why = format!("Host {host} is not the TLS server name {tls_name}");
        return refusal(StatusCode::MISDIRECTED_REQUEST, &why);
    }
    let port = origin.destination.port();
    let Some(address) = destination(
        shared,
        &policy,
        host.as_deref(),
        origin.destination.ip(),
        port,
    )
    .await
    else {
        let host = host.as_deref().unwrap_or("a request without Host");
        let why = format!("{host} is not allowed by this sandbox's network rules");
        return refusal(StatusCode::FORBIDDEN, &why);
    };
    if let Some(host) = &host {
        match policy.headers_for(host) {
            Ok(headers) => {
                for (name, value) in headers {
                    request.headers_mut().insert(name, value);
                }
            }
            Err(why) => return refusal(StatusCode::BAD_GATEWAY, &why),
        }
    }
    let sent = async {
        let stream = dial(address).await?;
        let response = match &origin.tls_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(io::Error::other)?;
                let tls = timeout(HANDSHAKE_TIMEOUT, connector().connect(name, stream))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                crate::relay::relay(tls, request).await
            }
            None => crate::relay::relay(stream, request).await,
        };
        response.map_err(io::Error::other)
    };
    match sent.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(e) => {
            let host = host.as_deref().unwrap_or("the server");
            refusal(StatusCode::BAD_GATEWAY, &format!("{host}: {e}"))
        }
    }
}

/// The proxy's own answer: `why`, as text.
fn refusal(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("cellbox egress proxy: {why}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// TLS toward servers, verified against the host's trusted CAs (Debian's
/// bundle, or the file `SSL_CERT_FILE` names); loaded once.
fn connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!("loading the host's trusted CAs: {error}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!("the egress proxy trusts {added} CAs ({ignored} unusable)");
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// A stream that first gives back bytes already read from it.
struct Rewind<S> {
    read: Vec<u8>,
    given: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(read: Vec<u8>, inner: S) -> Self {
        Rewind {
            read,
            given: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.given < self.read.len() {
            let left = &self.read[self.given..];
            let take = left.len().min(buf.remaining());
            buf.put_slice(&left[..take]);
            self.given += take;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
