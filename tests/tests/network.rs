//! Opt-in network access of namespace sandboxes (`runtime/src/namespace/network.rs`):
//! nothing leaves without it; with it, allowed addresses are reached and denied
//! ones refused by rules the sandbox's root cannot change; `pip install` works.
//! The test servers: `tests/network_rig.rs` (the microVM suite uses them too).

use cellbox::{BackendPolicy, CommandOptions, NetworkPolicy};
use cellbox_tests::network_rig::*;

const NAMESPACE: BackendPolicy = BackendPolicy::Namespace;

#[tokio::test]
async fn without_network_nothing_leaves() {
    check_nothing_leaves_without_network(NAMESPACE).await;
}

#[tokio::test]
async fn allowed_addresses_are_reached_and_denied_ones_refused() {
    check_allowed_reached_denied_refused(NAMESPACE).await;
}

/// The rules live in a network namespace the sandbox's root has no power
/// over: it cannot take an interface down, nor change the kernel's settings.
#[tokio::test]
async fn the_sandbox_root_cannot_change_the_network() {
    let s = sandbox(
        NAMESPACE,
        NetworkPolicy {
            allow_internet_access: true,
            deny_out: vec![format!("{DENIED}/32")],
            ..Default::default()
        },
    )
    .await;
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
        "the denied address stays refused"
    );
}

/// A package installed with pip at runtime imports in the next cell (the
/// registry is reached through the host's network; the host's CA bundle is
/// given to pip, as this machine's egress re-signs TLS).
#[tokio::test]
async fn pip_install_works_with_network() {
    let s = sandbox(NAMESPACE, NetworkPolicy::internet()).await;
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

/// Port 80 goes through the sandbox's egress proxy: a rule sets a header
/// whose secret is filled in only there (the library's [`SecretSource`]),
/// refusals are the proxy's 403, and `update_network` changes both at once.
#[tokio::test]
async fn the_egress_proxy_fills_rule_headers_and_takes_new_rules_live() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use cellbox::{HostRule, SecretSource};

    let secrets = SecretSource::new(Arc::new(|name: &str| {
        (name == "token").then(|| "s3cr3t-value".to_owned())
    }));
    let rule = |host: &str| {
        let headers = BTreeMap::from([("X-Token".into(), "${e2b.secrets.token}".into())]);
        BTreeMap::from([(host.to_owned(), vec![HostRule { headers }])])
    };
    let s = sandbox(
        NAMESPACE,
        NetworkPolicy {
            allow_out: vec![ALLOWED.into()],
            rules: rule(ALLOWED),
            secrets: Some(secrets.clone()),
            ..Default::default()
        },
    )
    .await;
    let curl = |address: &str| {
        let command = format!("curl -sS -m 10 http://{address}/");
        let s = &s;
        async move {
            let done = s.commands().run(&command, &Default::default()).await;
            done.unwrap().stdout
        }
    };
    let before = std::fs::read_to_string(seen_file()).unwrap().len();
    assert_eq!(curl(ALLOWED).await, format!("hello from {ALLOWED}"));
    let seen = std::fs::read_to_string(seen_file()).unwrap()[before..].to_ascii_lowercase();
    assert!(seen.contains("x-token: s3cr3t-value"), "{seen}");
    let refused = curl(DENIED).await;
    assert!(refused.contains("not allowed"), "{refused}");
    let environment = s.commands().run("env", &Default::default()).await.unwrap();
    assert!(!environment.stdout.contains("s3cr3t"), "{environment:?}");

    let swapped = NetworkPolicy {
        allow_out: vec![DENIED.into()],
        secrets: Some(secrets),
        ..Default::default()
    };
    s.update_network(swapped).await.unwrap();
    assert_eq!(curl(DENIED).await, format!("hello from {DENIED}"));
    assert!(curl(ALLOWED).await.contains("not allowed"));
    assert_eq!(
        fetch(&s, ALLOWED).await,
        "ConnectionRefusedError",
        "other ports too"
    );
    let fork = s.fork().await.unwrap();
    let command = format!("curl -sS -m 10 http://{DENIED}/");
    let forked = fork.commands().run(&command, &Default::default()).await;
    let expected = format!("hello from {DENIED}");
    assert_eq!(
        forked.unwrap().stdout,
        expected,
        "a fork has the rules of now"
    );
    fork.close().await.unwrap();
    s.close().await.unwrap();

    let offline = sandbox(NAMESPACE, NetworkPolicy::default()).await;
    let error = offline
        .update_network(NetworkPolicy::internet())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("started without network"),
        "{error}"
    );
}
