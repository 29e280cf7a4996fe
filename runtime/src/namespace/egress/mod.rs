//! A sandbox's egress proxy: every TCP connection the sandbox opens to
//! port 80 or 443 is redirected (nftables, in the sandbox's network
//! namespace, which the sandbox's root cannot change) to a socket this
//! process listens on inside that namespace ([`listener`]). There the host
//! name decides, as E2B's firewall does ([`policy`]):
//!
//! - TLS: the server name of the ClientHello (SNI). Passed through untouched
//!   to what that name resolves to on the host, unless a rule changes
//!   requests to that host: then the proxy completes the handshake with a
//!   certificate from the sandbox's own CA (trusted inside that sandbox
//!   only), checks each request's `Host` against the SNI, sets the rule's
//!   headers (secrets filled in here) and sends it on over TLS verified
//!   against the host's trusted CAs.
//! - Plain HTTP: each request's `Host`.
//!
//! With internet access closed, the sandbox's DNS queries come here too
//! ([`dns`]): only the names the rules allow exist.
//!
//! The proxy always dials the address it resolved itself for the name it
//! checked, so the sandbox's own DNS answers, an IP literal behind an
//! allowed name or another `Host` inside an allowed TLS connection reach
//! nothing the rules refuse. Rules can be replaced while the sandbox runs
//! ([`EgressProxy::update`]); connections already passed through keep going.

mod connection;
mod dns;
mod listener;
mod policy;

use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use listener::listen_in;
pub use policy::EgressPolicy;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::tls::CertAuthority;

/// Most connections one sandbox has open through its proxy at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a connection may take to say where it goes (request head, TLS
/// hello) and how long dialling that may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Name lookups one sandbox has under way at once (each holds a thread
/// of the runtime's blocking pool until the host's resolver answers).
const LOOKUPS_PER_SANDBOX: usize = 8;
/// ... and all sandboxes together, well under that pool's size.
const LOOKUPS_IN_ALL: usize = 128;

/// The addresses `name` has on the host, as the host's resolver (and its
/// hosts file) gives them; `None` if it has none, or takes too long. At
/// most [`LOOKUPS_PER_SANDBOX`] at once per sandbox, so that names made up
/// by the thousand hold up only their own sandbox's lookups.
async fn resolve(shared: &Shared, name: &str, port: u16) -> Option<Vec<std::net::SocketAddr>> {
    static ALL: Semaphore = Semaphore::const_new(LOOKUPS_IN_ALL);
    let lookup = async {
        let _own = shared.lookups.acquire().await.ok()?;
        let _turn = ALL.acquire().await.ok()?;
        tokio::net::lookup_host((name, port)).await.ok()
    };
    let found = tokio::time::timeout(HANDSHAKE_TIMEOUT, lookup)
        .await
        .ok()??;
    Some(found.collect())
}

/// A running egress proxy; stops with it.
#[derive(Debug)]
pub struct EgressProxy {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// Dropped with the proxy: every connection still open ends.
    _stop: tokio::sync::watch::Sender<()>,
}

/// What every connection of one proxy shares.
struct Shared {
    policy: RwLock<Arc<EgressPolicy>>,
    ca: Arc<CertAuthority>,
    /// TLS toward the sandbox, with the sandbox's CA's certificates.
    acceptor: tokio_rustls::TlsAcceptor,
    /// Room for this sandbox's name lookups.
    lookups: Semaphore,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn policy(&self) -> Arc<EgressPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl EgressProxy {
    /// Serves `listener` and `dns` (from [`listen_in`]) on `runtime` under
    /// `policy`.
    pub fn start(
        listener: std::net::TcpListener,
        dns: std::net::UdpSocket,
        policy: EgressPolicy,
        runtime: &tokio::runtime::Handle,
    ) -> Result<EgressProxy> {
        let ca = Arc::new(CertAuthority::for_sandbox()?);
        let shared = Arc::new(Shared {
            policy: RwLock::new(Arc::new(policy)),
            acceptor: ca.acceptor(),
            ca,
            lookups: Semaphore::new(LOOKUPS_PER_SANDBOX),
        });
        let failed = |e| Error::io("configuring the egress proxy's sockets", e);
        listener.set_nonblocking(true).map_err(failed)?;
        dns.set_nonblocking(true).map_err(failed)?;
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(failed)?;
        let dns = tokio::net::UdpSocket::from_std(dns).map_err(failed)?;
        let (stop, stopped) = tokio::sync::watch::channel(());
        let (dns_shared, mut dns_stopped) = (shared.clone(), stopped.clone());
        runtime.spawn(async move {
            tokio::select! {
                _ = dns::serve(dns, dns_shared) => {}
                _ = dns_stopped.changed() => {}
            }
        });
        let task = runtime.spawn(accept(listener, shared.clone(), stopped));
        Ok(EgressProxy {
            shared,
            task,
            _stop: stop,
        })
    }

    /// Replaces the rules for every request from now on.
    pub fn update(&self, policy: EgressPolicy) {
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// The certificate of the sandbox's CA (PEM), for its trust store.
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.pem()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stopped: tokio::sync::watch::Receiver<()>,
) {
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("the egress proxy could not accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the limit a connection is closed at once.
        let Ok(permit) = room.clone().try_acquire_owned() else {
            continue;
        };
        let (shared, mut stopped) = (shared.clone(), stopped.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = connection::handle(stream, shared) => {}
                _ = stopped.changed() => {}
            }
            drop(permit);
        });
    }
}
