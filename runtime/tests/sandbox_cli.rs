//! `cellbox sandbox list | kill | logs | spawn | connect` against a
//! `cellbox serve`, with the API key that server made and kept on first
//! start. Root is needed (the terminals' shells run in the namespace sandbox).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PORT: u16 = 45_210;

/// `cellbox serve` with its configuration folder in `config`, stopped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url() -> String {
    format!("http://127.0.0.1:{PORT}")
}

/// Starts the server; returns it and the key it printed (made on first start).
fn serve(config: &std::path::Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cellbox"))
        .args(["serve", "--port", "0", "--api-port", &PORT.to_string()])
        .env("XDG_CONFIG_HOME", config)
        .env_remove("CELLBOX_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting cellbox serve");
    let mut key = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut key)
        .unwrap();
    let key = key.trim().to_string();
    assert!(key.starts_with("e2b_"), "the new key is printed: {key:?}");
    let kept = std::fs::read_to_string(config.join("cellbox/api-key")).unwrap();
    assert_eq!(kept, key, "and kept");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cellbox serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), key)
}

/// `cellbox sandbox ARGS`, finding the key in `config` as a user would.
fn sandbox(config: &std::path::Path, args: &[&str]) -> Output {
    sandbox_command(config, args)
        .output()
        .expect("running cellbox sandbox")
}

fn sandbox_command(config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellbox"));
    command
        .arg("sandbox")
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("E2B_API_URL", url())
        .env_remove("E2B_API_KEY");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn listed(config: &std::path::Path, args: &[&str]) -> Vec<String> {
    let output = sandbox(config, &[&["list", "--format", "json"], args].concat());
    assert!(output.status.success(), "{output:?}");
    let list: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let mut ids: Vec<String> = list
        .iter()
        .map(|s| s["sandboxID"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn list_kill_and_follow_the_logs_of_sandboxes() {
    let config = tempfile::tempdir().unwrap();
    let (_server, key) = serve(config.path());
    let http = reqwest::Client::new();
    let create = async |body: Value| -> (String, String) {
        let created: Value = http
            .post(format!("{}/sandboxes", url()))
            .header("x-api-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["sandboxID"].as_str().unwrap().to_string();
        (id, created["envdAccessToken"].as_str().unwrap().to_string())
    };
    let (a, token) = create(json!({"templateID": "base", "metadata": {"who": "a b"}})).await;
    let (b, _) = create(json!({"templateID": "base"})).await;

    let mut all = vec![a.clone(), b.clone()];
    all.sort();
    assert_eq!(listed(config.path(), &[]), all);
    assert_eq!(
        listed(config.path(), &["--metadata", "who=a b"]),
        vec![a.clone()]
    );
    assert!(listed(config.path(), &["--state", "paused"]).is_empty());
    let table = stdout(&sandbox(config.path(), &["list"]));
    assert!(
        table.starts_with("ID") && table.contains(&a) && table.contains("who=a b"),
        "{table}"
    );

    // A cell through the gateway, then follow the log until the sandbox ends.
    let ran = http
        .post(format!("{}/execute", url()))
        .header("e2b-sandbox-id", &a)
        .header("e2b-sandbox-port", "49999")
        .header("x-access-token", &token)
        .json(&json!({"code": "1 + 1"}))
        .send()
        .await
        .unwrap();
    assert!(ran.status().is_success());
    let _ = ran.text().await;
    let follower = sandbox_command(config.path(), &["logs", &a, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = sandbox(config.path(), &["kill", &a]);
    assert!(killed.status.success(), "{killed:?}");
    let started = Instant::now();
    let followed = tokio::task::spawn_blocking(move || follower.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "following ends with the sandbox"
    );
    let log = stdout(&followed);
    assert!(
        log.contains("started") && log.contains("code run") && log.contains("sandbox killed"),
        "{log}"
    );
    assert_eq!(listed(config.path(), &[]), vec![b.clone()]);

    let json_log = stdout(&sandbox(
        config.path(),
        &["logs", &a, "--format", "json", "--level", "warn"],
    ));
    assert!(json_log.is_empty(), "nothing at warn or above: {json_log}");

    let missing = sandbox(config.path(), &["kill", "nosuchsandbox"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{missing:?}"
    );
    let wrong_key = sandbox_command(config.path(), &["list"])
        .env("E2B_API_KEY", "e2b_not-the-right-key-at-all")
        .output()
        .unwrap();
    assert_eq!(wrong_key.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wrong_key.stderr).contains("X-API-Key"),
        "{wrong_key:?}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let no_key = sandbox(elsewhere.path(), &["list"]);
    assert_eq!(no_key.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&no_key.stderr).contains("no API key"),
        "{no_key:?}"
    );

    // A terminal: typed lines run in a shell in the sandbox; its exit code is ours.
    let typed = |args: &[&str], input: &str| {
        let mut child = sandbox_command(config.path(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let before = listed(config.path(), &[]);
    let spawned = typed(&["spawn"], "echo in-$((6 * 7)); stty size\nexit 3\n");
    assert_eq!(spawned.status.code(), Some(3), "{spawned:?}");
    let screen = stdout(&spawned);
    assert!(
        screen.contains("in-42") && screen.contains("24 80"),
        "{screen}"
    );
    assert_eq!(
        listed(config.path(), &[]),
        before,
        "spawn's sandbox is killed after"
    );
    let connected = typed(&["connect", &b], "cd /tmp && touch from-connect && pwd\n");
    assert_eq!(
        connected.status.code(),
        Some(0),
        "Ctrl-D at the end of input ends the shell: {connected:?}"
    );
    assert!(stdout(&connected).contains("/tmp"), "{connected:?}");
    let again = typed(&["connect", &b], "ls /tmp/from-connect; exit\n");
    assert!(
        stdout(&again).contains("/tmp/from-connect"),
        "the same sandbox: {again:?}"
    );
    let gone = typed(&["connect", "nosuchsandbox"], "");
    assert_eq!(gone.status.code(), Some(2));

    let all = sandbox(config.path(), &["kill", "--all"]);
    assert!(all.status.success(), "{all:?}");
    assert!(listed(config.path(), &[]).is_empty());
}
