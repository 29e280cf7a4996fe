//! Named servers for the egress proxy's checks, beside the network rig's
//! (`network_rig.rs`, whose namespace and HTTP servers on port 80 they
//! share: nothing leaves this machine): HTTPS on port 443 on both of its
//! addresses, `api.cellbox.test` naming the allowed one and
//! `other.cellbox.test` the denied one in a hosts file of their own (the
//! test starts `cellbox serve` with it over `/etc/hosts`, in a mount
//! namespace of its own), with a certificate from a CA of their own (the
//! server trusts it through `SSL_CERT_FILE`). Each answers `hello from
//! ADDRESS` and notes every request head it gets in the rig's `seen` file,
//! which only the test reads.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::network_rig::{ALLOWED, DENIED, SERVERS_NETNS, note, seen_file, servers};

/// The name of the allowed address.
pub const API_NAME: &str = "api.cellbox.test";
/// The name of the denied address.
pub const OTHER_NAME: &str = "other.cellbox.test";

/// The rig's files.
#[derive(Debug)]
pub struct EgressRig {
    /// The CA the servers' certificate comes from (PEM).
    pub ca: PathBuf,
    /// `/etc/hosts` with the servers' names.
    pub hosts: PathBuf,
    /// Every request head the servers got, in order.
    pub seen: PathBuf,
}

/// Starts the servers (once per test binary).
pub fn egress_servers() -> &'static EgressRig {
    static RIG: OnceLock<EgressRig> = OnceLock::new();
    RIG.get_or_init(|| {
        servers();
        let dir = std::env::temp_dir().join(format!("cellbox-egress-rig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rig = EgressRig {
            ca: dir.join("ca.pem"),
            hosts: dir.join("hosts"),
            seen: seen_file(),
        };
        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        hosts += &format!("\n{ALLOWED} {API_NAME}\n{DENIED} {OTHER_NAME}\n");
        std::fs::write(&rig.hosts, hosts).unwrap();
        let (ca_pem, tls) = certificates();
        std::fs::write(&rig.ca, ca_pem).unwrap();
        for address in [ALLOWED, DENIED] {
            let tls = tls.clone();
            let (bound, listening) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // This thread (and those it starts) alone is in the servers' namespace.
                let ns = std::fs::File::open(format!("/run/netns/{SERVERS_NETNS}")).unwrap();
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let listener = TcpListener::bind((address, 443)).expect("binding a test server");
                bound.send(()).unwrap();
                for stream in listener.incoming().flatten() {
                    let tls = tls.clone();
                    std::thread::spawn(move || answer(stream, tls, address));
                }
            });
            listening.recv().unwrap();
        }
        rig
    })
}

/// The CA (PEM) and the servers' TLS configuration: one certificate for
/// every name under `cellbox.test`.
fn certificates() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Subjects that differ: a leaf named as its issuer looks self-signed.
    (ca_params.distinguished_name).push(DnType::CommonName, "cellbox egress rig CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names = vec![API_NAME.into(), OTHER_NAME.into(), "*.cellbox.test".into()];
    let mut leaf = CertificateParams::new(names).unwrap();
    (leaf.distinguished_name).push(DnType::CommonName, "cellbox.test");
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(cellbox::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// Reads one request head over TLS, notes it, answers `hello from ADDRESS`.
fn answer(stream: std::net::TcpStream, tls: Arc<rustls::ServerConfig>, address: &str) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let Ok(connection) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut stream = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    note(address, &head);
    let body = format!("hello from {address}");
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}
