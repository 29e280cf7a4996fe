//! HTTPS on the API port, beside plain HTTP: a connection whose first byte
//! opens a TLS handshake ([`MaybeTls`]) gets a certificate for the name it
//! asks for, issued on the spot by the server's own certificate authority
//! ([`LocalCa`]). That CA is made on first start and kept in the server's
//! data folder (`tls/ca.pem`, its key private beside it); it may sign only
//! names under `localhost` and loopback addresses (name constraints), so
//! trusting it (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`) lets nothing else be
//! impersonated. With it `https://{port}-{id}.localhost:49980`, the URL E2B's
//! SDKs build from `get_host(port)`, reaches a sandbox's server.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};
use crate::lock;

/// The first byte of a TLS connection (a handshake record).
const HANDSHAKE: u8 = 0x16;
/// Certificates kept for names already asked for; past it, they are made anew.
const CERTIFICATES_KEPT: usize = 1024;
/// The CA's subject: the same on every start, so a kept CA signs as before.
const CA_NAME: &str = "cellbox serve local CA";

/// The server's certificate authority and the certificates it issued.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// One key for every issued certificate (made at each start).
    leaf_key: KeyPair,
    issued: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    ca_file: PathBuf,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The CA kept in `dir` (`ca.pem`, `ca-key.pem`), made there if missing.
    pub fn open(dir: &Path) -> Result<LocalCa> {
        let (ca_file, key_file) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        let failed = |what: &str, e: rcgen::Error| {
            Error::InvalidArgument(format!("the local CA in {}: {what}: {e}", dir.display()))
        };
        let (key, ca_pem) = match std::fs::read_to_string(&key_file) {
            Ok(key_pem) => {
                let key = KeyPair::from_pem(&key_pem).map_err(|e| failed("its key", e))?;
                let ca_pem = std::fs::read_to_string(&ca_file)
                    .map_err(|e| Error::io(format!("reading {}", ca_file.display()), e))?;
                (key, ca_pem)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(|e| failed("making its key", e))?;
                let ca = ca_params()
                    .self_signed(&key)
                    .map_err(|e| failed("signing it", e))?;
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                crate::cache::write_private_atomically(&key_file, key.serialize_pem().as_bytes())?;
                crate::cache::write_private_atomically(&ca_file, ca.pem().as_bytes())?;
                (key, ca.pem())
            }
            Err(e) => return Err(Error::io(format!("reading {}", key_file.display()), e)),
        };
        let ca_der =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
                Error::InvalidArgument(format!("{} is not a certificate: {e}", ca_file.display()))
            })?;
        Ok(LocalCa {
            issuer: Issuer::new(ca_params(), key),
            ca_der,
            leaf_key: KeyPair::generate().map_err(|e| failed("making a key", e))?,
            issued: Mutex::default(),
            ca_file,
        })
    }

    /// The file clients trust the CA from (`SSL_CERT_FILE=...`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Answers TLS handshakes with this CA's certificates.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// A certificate for `name` (a name under localhost, or loopback's).
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(kept) = lock(&self.issued).get(name) {
            return Some(kept.clone());
        }
        let issued = self.issue(name);
        if let Err(e) = &issued {
            tracing::warn!("no certificate for {name}: {e}");
        }
        let issued = Arc::new(issued.ok()?);
        let mut kept = lock(&self.issued);
        if kept.len() >= CERTIFICATES_KEPT {
            kept.clear();
        }
        kept.insert(name.to_owned(), issued.clone());
        Some(issued)
    }

    fn issue(&self, name: &str) -> std::result::Result<CertifiedKey, String> {
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) =
            (now - Duration::hours(1), now + Duration::days(90));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        Ok(CertifiedKey::new(chain, signing))
    }
}

/// TLS by *ring*: its key exchanges lack the post-quantum ones (hence
/// rustls's deprecation), which a connection to this machine's own loopback
/// does not need; aws-lc-rs, which has them, needs CMake to build.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Names the CA signs: `localhost` and names under it; loopback addresses
/// (a client connecting to `127.0.0.1` names none).
fn signable(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid && (name == "localhost" || name.ends_with(".localhost"))
}

impl ResolvesServerCert for LocalCa {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) if signable(name) => self.certificate(&name.to_ascii_lowercase()),
            Some(_) => None,
            None => self.certificate("127.0.0.1"),
        }
    }
}

/// The CA's parameters (the same on every start).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = (now - Duration::days(1), now + Duration::days(3650));
    let loopback =
        |ip: IpAddr, prefix| GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, prefix));
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            loopback(IpAddr::from([127, 0, 0, 0]), 8),
            loopback(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
        ],
        excluded_subtrees: Vec::new(),
    });
    params
}

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
                    let tls = peeked.filled() == [HANDSHAKE];
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

    #[test]
    fn only_names_under_localhost_are_signed() {
        for name in [
            "localhost",
            "8000-abc.localhost",
            "a.b.localhost.",
            "LOCALHOST",
        ] {
            assert!(signable(name), "{name}");
        }
        for name in [
            "example.com",
            "localhost.example.com",
            "evillocalhost",
            "a..localhost",
            "a_b.localhost",
            "",
        ] {
            assert!(!signable(name), "{name}");
        }
    }

    #[test]
    fn the_ca_is_kept_and_signs_the_same_way_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::open(dir.path()).unwrap();
        let pem = std::fs::read_to_string(first.ca_file()).unwrap();
        let key = dir.path().join("ca-key.pem");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA's key is private");
        assert!(first.certificate("8000-abc.localhost").is_some());
        let again = LocalCa::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(again.ca_file()).unwrap(), pem);
        let issued = again.certificate("8000-abc.localhost").unwrap();
        assert_eq!(issued.cert.len(), 2, "the leaf and the CA");
        assert_eq!(issued.cert[1], first.ca_der);
    }

    /// One port, both kinds of connection; TLS verified against the CA
    /// (name constraints included) as a client that trusts it does.
    #[tokio::test]
    async fn tls_and_plain_connections_share_a_port() {
        use rustls::pki_types::ServerName;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::open(dir.path()).unwrap());
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
