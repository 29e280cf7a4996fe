//! Opt-in network access of namespace sandboxes (`runtime/src/namespace/network.rs`):
//! nothing leaves without it; with it, allowed addresses are reached and denied
//! ones refused by rules the sandbox's root cannot change; `pip install` works.
//!
//! Two test servers listen on TEST-NET-2 addresses the test adds to the
//! host's loopback interface (not every kernel has dummy interfaces), so that
//! nothing outside is needed; they are host addresses but not loopback's
//! 127.0.0.0/8, which slirp4netns never reaches.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;

use cellbox::{CommandOptions, NetworkPolicy, Sandbox, SandboxOptions};

const ALLOWED: &str = "198.51.100.1";
const DENIED: &str = "198.51.100.2";
const PORT: u16 = 18_080;

/// Adds both addresses to `lo` (once per test binary) and serves
/// `hello from ADDRESS` on each.
fn servers() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)")
        };
        for address in [ALLOWED, DENIED] {
            let added = ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
            let said = String::from_utf8_lossy(&added.stderr);
            assert!(
                added.status.success()
                    || said.contains("File exists")
                    || said.contains("already assigned"),
                "adding {address} to lo: {said}"
            );
            let listener = TcpListener::bind((address, PORT)).expect("binding a test server");
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request);
                    let body = format!("hello from {address}");
                    let _ = write!(
                        stream,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
}

async fn sandbox(network: NetworkPolicy) -> Sandbox {
    servers();
    Sandbox::create(
        SandboxOptions::default()
            .with_backend(cellbox::BackendPolicy::Namespace)
            .with_network(network),
    )
    .await
    .expect("starting a namespace sandbox (needs root, slirp4netns and nft)")
}

/// What `GET http://ADDRESS:PORT/` gives inside the sandbox: the body, or
/// the error's class name.
async fn fetch(sandbox: &Sandbox, address: &str) -> String {
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

#[tokio::test]
async fn without_network_nothing_leaves() {
    let s = sandbox(NetworkPolicy::default()).await;
    assert_eq!(fetch(&s, ALLOWED).await, "OSError", "no route out");
}

#[tokio::test]
async fn allowed_addresses_are_reached_and_denied_ones_refused() {
    let s = sandbox(NetworkPolicy {
        allow_internet_access: true,
        allow_out: vec![ALLOWED.into()],
        deny_out: vec![format!("{DENIED}/32")],
    })
    .await;
    assert_eq!(fetch(&s, ALLOWED).await, format!("hello from {ALLOWED}"));
    assert_eq!(fetch(&s, DENIED).await, "ConnectionRefusedError");
    // The host's own addresses are refused unless allowed.
    let host = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|a| a.address?.as_sockaddr_in().map(|v4| v4.ip()))
        .find(|ip| !ip.is_loopback() && ![ALLOWED, DENIED].contains(&ip.to_string().as_str()));
    if let Some(host) = host {
        assert_eq!(fetch(&s, &host.to_string()).await, "ConnectionRefusedError");
    }

    // Only `allow_out`, without internet access: the rest is refused.
    let only = sandbox(NetworkPolicy {
        allow_out: vec![ALLOWED.into()],
        ..Default::default()
    })
    .await;
    assert_eq!(fetch(&only, ALLOWED).await, format!("hello from {ALLOWED}"));
    assert_eq!(fetch(&only, DENIED).await, "ConnectionRefusedError");
}

/// The rules live in a network namespace the sandbox's root has no power
/// over: it cannot take an interface down, nor change the kernel's settings.
#[tokio::test]
async fn the_sandbox_root_cannot_change_the_network() {
    let s = sandbox(NetworkPolicy::internet()).await;
    let root = CommandOptions::default().user("root");
    let down = s
        .commands()
        .run(
            "python3 -c \"import fcntl, socket, struct\nfor name in (b'tap0', b'lo'):\n    try:\n        fcntl.ioctl(socket.socket(), 0x8914, struct.pack('16sH', name, 0))\n        print('down')\n    except OSError as e:\n        print(e.errno)\"",
            &root,
        )
        .await
        .unwrap();
    assert_eq!(down.stdout, "1\n1\n", "EPERM twice: {down:?}");
    let forward = s
        .commands()
        .run("echo 1 > /proc/sys/net/ipv4/ip_forward", &root)
        .await
        .unwrap();
    assert_ne!(forward.exit_code, 0, "{forward:?}");
    assert_eq!(
        fetch(&s, DENIED).await,
        "ConnectionRefusedError",
        "the host stays refused"
    );
}

/// A package installed with pip at runtime imports in the next cell (the
/// registry is reached through the host's network; the host's CA bundle is
/// given to pip, as this machine's egress re-signs TLS).
#[tokio::test]
async fn pip_install_works_with_network() {
    let s = sandbox(NetworkPolicy::internet()).await;
    let named = s
        .run_code("import socket; socket.gethostbyname('pypi.org')")
        .await
        .unwrap();
    assert!(named.text().is_some_and(|t| t.contains('.')), "{named:?}");
    let ca = std::fs::read("/etc/ssl/certs/ca-certificates.crt").expect("the host's CA bundle");
    s.files().write("/tmp/host-ca.crt", &ca).await.unwrap();
    let install = s
        .commands()
        .run(
            "pip install --user --no-cache-dir --cert /tmp/host-ca.crt cowsay==6.1",
            &CommandOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(install.exit_code, 0, "{install:?}");
    let said = s
        .run_code("import cowsay; cowsay.get_output_string('cow', 'hi').count('hi')")
        .await
        .unwrap();
    assert_eq!(said.text(), Some("1"), "{said:?}");
}
