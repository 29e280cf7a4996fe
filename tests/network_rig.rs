//! Network test rig shared by the namespace and microVM suites: two HTTP
//! servers on TEST-NET-2 addresses in a network namespace of their own,
//! joined to the host's by a veth pair (a machine elsewhere, as far as the
//! sandboxes' user-mode networks can tell), so that nothing outside is
//! needed, and the servers are not the host's own addresses (which the
//! sandboxes are refused by default).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::sync::mpsc::channel;

use cellbox::{BackendPolicy, NetworkPolicy, Sandbox, SandboxOptions};

/// The address the tests allow.
pub const ALLOWED: &str = "198.51.100.1";
/// The address the tests deny.
pub const DENIED: &str = "198.51.100.2";
/// Both servers' port.
pub const PORT: u16 = 18_080;
/// The same servers on HTTP's own port (which the sandboxes' egress proxies
/// handle, by `Host`).
pub const HTTP_PORT: u16 = 80;

/// Where the servers note every request they get (only the tests read it).
pub fn seen_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cellbox-network-rig-{}.log", std::process::id()))
}
/// The servers' network namespace (`ip netns`).
pub const SERVERS_NETNS: &str = "cellbox-test-servers";

fn ip(args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Makes the servers' namespace and link afresh (whatever an earlier test
/// binary left goes first), then serves `hello from ADDRESS` on both
/// addresses, on [`PORT`] and [`HTTP_PORT`]; once per test binary.
pub fn servers() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let netns = format!("/run/netns/{SERVERS_NETNS}");
        let _ = ip(&["link", "del", "cbtest0"]);
        let _ = ip(&["netns", "del", SERVERS_NETNS]);
        let _ = std::fs::remove_file(&netns);
        ip_ok(&["netns", "add", SERVERS_NETNS]);
        ip_ok(&[
            "link", "add", "cbtest0", "type", "veth", "peer", "name", "cbtest1",
        ]);
        ip_ok(&["link", "set", "cbtest1", "netns", SERVERS_NETNS]);
        ip_ok(&["addr", "add", "198.51.100.254/24", "dev", "cbtest0"]);
        ip_ok(&["link", "set", "cbtest0", "up"]);
        let inside = ["-n", SERVERS_NETNS];
        for address in [ALLOWED, DENIED] {
            let cidr = format!("{address}/24");
            ip_ok(&[&inside[..], &["addr", "add", &cidr, "dev", "cbtest1"]].concat());
        }
        ip_ok(&[&inside[..], &["link", "set", "cbtest1", "up"]].concat());
        ip_ok(&[&inside[..], &["link", "set", "lo", "up"]].concat());
        std::fs::write(seen_file(), "").expect("the servers' log");
        for (address, port) in [ALLOWED, DENIED]
            .into_iter()
            .flat_map(|a| [(a, PORT), (a, HTTP_PORT)])
        {
            let (bound, listening) = channel();
            let netns = netns.clone();
            std::thread::spawn(move || {
                // This thread alone moves into the servers' namespace.
                let ns = std::fs::File::open(&netns).expect("the servers' namespace");
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("entering the servers' namespace");
                let listener = TcpListener::bind((address, port)).expect("binding a test server");
                bound.send(()).unwrap();
                for mut stream in listener.incoming().flatten() {
                    let mut request = [0u8; 4096];
                    let read = stream.read(&mut request).unwrap_or(0);
                    note(address, &request[..read]);
                    let body = format!("hello from {address}");
                    let _ = write!(
                        stream,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            listening.recv().expect("a test server started");
        }
    });
}

/// Appends a request the servers got to [`seen_file`].
pub fn note(address: &str, request: &[u8]) {
    static LOG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(seen_file()) {
        let _ = writeln!(log, "to {address}:\n{}", String::from_utf8_lossy(request));
    }
}

/// A sandbox on `backend` with `network` (the servers started first).
pub async fn sandbox(backend: BackendPolicy, network: NetworkPolicy) -> Sandbox {
    servers();
    Sandbox::create(
        SandboxOptions::default()
            .with_backend(backend)
            .with_network(network),
    )
    .await
    .expect("starting a sandbox with network (the namespace backend needs root, slirp4netns and nft; the microVM passt)")
}

/// What `GET http://ADDRESS:PORT/` gives inside the sandbox: the body, or
/// the error's class name.
pub async fn fetch(sandbox: &Sandbox, address: &str) -> String {
    let code = format!(
        "import urllib.request\ntry:\n    r = urllib.request.urlopen('http://{address}:{PORT}/', timeout=5).read().decode()\nexcept Exception as e:\n    r = type(getattr(e, 'reason', e)).__name__\nr"
    );
    let execution = sandbox.run_code(&code).await.unwrap();
    assert!(execution.error.is_none(), "{execution:?}");
    execution
        .text()
        .unwrap_or_default()
        .trim_matches('\'')
        .to_string()
}

/// Without network options nothing leaves.
pub async fn check_nothing_leaves_without_network(backend: BackendPolicy) {
    let s = sandbox(backend, NetworkPolicy::default()).await;
    assert_eq!(fetch(&s, ALLOWED).await, "OSError", "no route out");
}

/// Allowed addresses are reached; denied ones and the host's own addresses
/// are refused at once; with `allow_out` alone, the rest is refused.
pub async fn check_allowed_reached_denied_refused(backend: BackendPolicy) {
    let s = sandbox(
        backend,
        NetworkPolicy {
            allow_internet_access: true,
            allow_out: vec![ALLOWED.into()],
            deny_out: vec![format!("{DENIED}/32")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(fetch(&s, ALLOWED).await, format!("hello from {ALLOWED}"));
    assert_eq!(fetch(&s, DENIED).await, "ConnectionRefusedError");
    let host = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|a| a.address?.as_sockaddr_in().map(|v4| v4.ip()))
        .find(|ip| !ip.is_loopback() && ![ALLOWED, DENIED].contains(&ip.to_string().as_str()));
    if let Some(host) = host {
        assert_eq!(fetch(&s, &host.to_string()).await, "ConnectionRefusedError");
    }
    s.close().await.unwrap();

    let only = sandbox(
        backend,
        NetworkPolicy {
            allow_out: vec![ALLOWED.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(fetch(&only, ALLOWED).await, format!("hello from {ALLOWED}"));
    assert_eq!(fetch(&only, DENIED).await, "ConnectionRefusedError");
    only.close().await.unwrap();
}
