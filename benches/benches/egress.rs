//! A namespace sandbox's HTTP requests through its egress proxy (port 80:
//! the `Host` checked, rules applied, the name resolved on the host) and,
//! as the peer, straight through slirp4netns's user-mode network (port
//! 18080, by address only), to the same local server (the network test
//! rig: a network namespace of its own behind a veth pair). Each sample is
//! the mean of 20 requests on fresh connections, timed inside the sandbox;
//! with a header rule whose value is a secret, too.
//!
//!     cargo bench -p cellbox-benches --bench egress
//!
//! Needs root (the rig's namespace, the namespace sandbox).

#![allow(clippy::print_stdout)] // the report is this program's output

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cellbox::{BackendPolicy, HostRule, NetworkPolicy, SecretSource};
use cellbox_benches::{measure_part, table};

#[path = "../../tests/network_rig.rs"]
#[allow(dead_code)] // (the rig's checks are the tests')
mod network_rig;
use network_rig::{ALLOWED, HTTP_PORT, PORT};

/// Requests per sample.
const REQUESTS: u32 = 20;

/// Python timing `REQUESTS` GETs of `url` on fresh connections; prints the
/// mean in seconds.
fn timing(url: &str) -> String {
    format!(
        "python3 -c \"import time, urllib.request\nstarted = time.perf_counter()\n\
         for _ in range({REQUESTS}):\n    urllib.request.urlopen('{url}', timeout=10).read()\n\
         print((time.perf_counter() - started) / {REQUESTS})\""
    )
}

#[tokio::main]
async fn main() {
    let secrets = SecretSource::new(Arc::new(|_: &str| Some("a-secret-value".to_owned())));
    let headers = BTreeMap::from([("Authorization".into(), "${e2b.secrets.token}".into())]);
    let policy = NetworkPolicy {
        allow_out: vec![ALLOWED.into()],
        rules: BTreeMap::from([(ALLOWED.to_owned(), vec![HostRule { headers }])]),
        secrets: Some(secrets),
        ..Default::default()
    };
    let sandbox = network_rig::sandbox(BackendPolicy::Namespace, policy).await;
    let request = async |url: String| {
        let command = timing(&url);
        let done = sandbox.commands().run(&command, &Default::default()).await;
        let said = done.expect("running the requests");
        let seconds: f64 = said.stdout.trim().parse().expect(&said.stderr);
        Duration::from_secs_f64(seconds)
    };
    let proxied = measure_part(
        "HTTP GET through the egress proxy, a rule's secret header set (port 80)",
        2,
        30,
        async || request(format!("http://{ALLOWED}:{HTTP_PORT}/")).await,
    )
    .await;
    let direct = measure_part(
        "peer: HTTP GET straight through slirp4netns (port 18080)",
        2,
        30,
        async || request(format!("http://{ALLOWED}:{PORT}/")).await,
    )
    .await;
    sandbox.close().await.unwrap();
    println!("{}", table(&[&proxied], &direct));
}
