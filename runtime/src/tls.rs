//! Certificate authorities made by cellbox, and the certificates they
//! issue on the spot for the name a TLS client asks for:
//!
//! - the server's own ([`CertAuthority::open`]): made on first start and kept
//!   in its data folder (`ca.pem`, its key private beside it), allowed to sign
//!   only names under `localhost` and loopback addresses (name constraints),
//!   so trusting it lets nothing else be impersonated; `cellbox serve` answers
//!   HTTPS on its API port with it (`serve::tls`);
//! - one per sandbox with network ([`CertAuthority::for_sandbox`]): made when
//!   the sandbox starts, its key only in this process, trusted only inside
//!   that sandbox; the egress proxy presents its certificates to the sandbox
//!   for the hosts whose requests it changes (`namespace::egress`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};
use crate::lock;

/// The first byte of a TLS connection (a handshake record).
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;
/// Certificates kept for names already asked for; past it, they are made anew.
const CERTIFICATES_KEPT: usize = 1024;
/// The server's CA's subject: the same on every start, so a kept CA signs
/// as before.
const CA_NAME: &str = "cellbox serve local CA";
/// A sandbox's CA's subject.
const SANDBOX_CA_NAME: &str = "cellbox sandbox egress CA";

/// A certificate authority and the certificates it issued.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) ca_der: CertificateDer<'static>,
    ca_pem: String,
    /// One key for every issued certificate (made at each start).
    leaf_key: KeyPair,
    issued: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Where it is kept; `None`: a sandbox's, in memory only.
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn rcgen_failed(what: &str, e: rcgen::Error) -> Error {
    Error::InvalidArgument(format!("{what}: {e}"))
}

impl CertAuthority {
    /// A new CA for one sandbox's egress proxy: unconstrained (it signs the
    /// hosts the sandbox's rules name), kept in memory only.
    pub fn for_sandbox() -> Result<CertAuthority> {
        let key = KeyPair::generate().map_err(|e| rcgen_failed("making a CA key", e))?;
        let params = ca_params(SANDBOX_CA_NAME, None);
        let ca = params
            .self_signed(&key)
            .map_err(|e| rcgen_failed("signing a CA", e))?;
        Ok(CertAuthority {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
            leaf_key: KeyPair::generate().map_err(|e| rcgen_failed("making a key", e))?,
            issued: Mutex::default(),
            ca_file: None,
        })
    }

    /// The server's CA, kept in `dir` (`ca.pem`, `ca-key.pem`), made there
    /// if missing; it signs names under `localhost` and loopback addresses.
    pub fn open(dir: &Path) -> Result<CertAuthority> {
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
                let ca = ca_params(CA_NAME, Some(localhost_only()))
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
        Ok(CertAuthority {
            issuer: Issuer::new(ca_params(CA_NAME, Some(localhost_only())), key),
            ca_der,
            ca_pem,
            leaf_key: KeyPair::generate().map_err(|e| failed("making a key", e))?,
            issued: Mutex::default(),
            ca_file: Some(ca_file),
        })
    }

    /// The file clients trust a kept CA from (`SSL_CERT_FILE=...`).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether it may sign `name`: a sandbox's CA any valid host name, the
    /// server's those under localhost.
    fn signs(&self, name: &str) -> bool {
        valid_name(name) && (self.ca_file.is_none() || under_localhost(name))
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

    /// A certificate for `name` (a host name, or loopback's address).
    pub(crate) fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
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
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A DNS host name (letters, digits, hyphens; labels of 1 to 63).
pub(crate) fn valid_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `localhost` or a name under it.
fn under_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

impl ResolvesServerCert for CertAuthority {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) if self.signs(name) => self.certificate(&name.to_ascii_lowercase()),
            Some(_) => None,
            None if self.ca_file.is_some() => self.certificate("127.0.0.1"),
            None => None,
        }
    }
}

/// Names under localhost and loopback addresses (a client connecting to
/// `127.0.0.1` names none).
fn localhost_only() -> NameConstraints {
    let loopback =
        |ip: IpAddr, prefix| GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, prefix));
    NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            loopback(IpAddr::from([127, 0, 0, 0]), 8),
            loopback(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
        ],
        excluded_subtrees: Vec::new(),
    }
}

/// A CA's parameters (the same on every start for the same arguments).
fn ca_params(name: &str, constraints: Option<NameConstraints>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = (now - Duration::days(1), now + Duration::days(3650));
    params.name_constraints = constraints;
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_ca_signs_only_names_under_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::open(dir.path()).unwrap();
        let sandbox = CertAuthority::for_sandbox().unwrap();
        let signable = |name: &str| ca.signs(name);
        assert!(sandbox.signs("api.example.com") && !sandbox.signs("a_b.example.com"));
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
        let first = CertAuthority::open(dir.path()).unwrap();
        let pem = std::fs::read_to_string(first.ca_file().unwrap()).unwrap();
        let key = dir.path().join("ca-key.pem");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA's key is private");
        assert!(first.certificate("8000-abc.localhost").is_some());
        let again = CertAuthority::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.ca_file().unwrap()).unwrap(),
            pem
        );
        let issued = again.certificate("8000-abc.localhost").unwrap();
        assert_eq!(issued.cert.len(), 2, "the leaf and the CA");
        assert_eq!(issued.cert[1], first.ca_der);
    }
}
