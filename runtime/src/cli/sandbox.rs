//! `cellbox sandbox list | kill | logs | spawn | connect`: E2B's sandbox CLI
//! commands against a running `cellbox serve` (its control plane, with its
//! API key; `spawn` and `connect` attach a terminal, [`super::terminal`]).

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::serve::DEFAULT_API_PORT;
use crate::serve::api::key;

use super::{EXIT_OK, EXIT_SANDBOX_ERROR, terminal};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// The server's API (`cellbox serve`'s API port).
    #[arg(long, env = "E2B_API_URL", default_value_t = format!("http://localhost:{DEFAULT_API_PORT}"))]
    api_url: String,
    /// Its API key; by default the one `cellbox serve` keeps in ~/.config/cellbox/api-key.
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// The sandboxes, running and paused.
    #[command(alias = "ls")]
    List {
        /// Only these states (running, paused; comma-separated).
        #[arg(long)]
        state: Option<String>,
        /// Only sandboxes with this metadata (KEY=VALUE; repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// Kills sandboxes at once.
    Kill {
        /// The sandboxes' ids.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every sandbox of the server.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// A new sandbox with your terminal attached to a shell in it; killed when the shell exits.
    Spawn {
        /// Its template (any of E2B's default names).
        #[arg(default_value = "base")]
        template: String,
        /// Its timeout, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Keep it running after the shell exits.
        #[arg(long)]
        keep: bool,
    },
    /// Your terminal attached to a new shell in a running sandbox.
    Connect { id: String },
    /// A sandbox's log: what it did and what was asked of it.
    Logs {
        id: String,
        /// Keep printing new entries until the sandbox ends.
        #[arg(short, long)]
        follow: bool,
        /// The least level shown.
        #[arg(long, value_enum, default_value_t = Level::Info)]
        level: Level,
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// A sandbox's CPU, memory and disk use, sampled every few seconds.
    Metrics {
        id: String,
        /// Keep printing new samples until the sandbox ends.
        #[arg(short, long)]
        follow: bool,
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The control plane, with the key.
struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

/// A failed call, said in one line.
type Failure = String;

impl Client {
    /// Sandbox `id`'s traffic, through this server.
    fn target(&self, id: &str, token: &str) -> terminal::Target {
        terminal::Target {
            url: self.url.clone(),
            id: id.to_string(),
            token: token.to_string(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>, Failure> {
        self.request(method, path, query, None).await
    }

    /// A call with a JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, Failure> {
        self.request(method, path, &[], body).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Option<Value>, Failure> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        request = request.header("X-API-Key", &self.key).query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {url} ({e}); is `cellbox serve` running?"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("reading the answer of {url}: {e}"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(format!("{status}: {message}"));
        }
        if text.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{url} answered no JSON: {e}"))
    }
}

pub async fn run(args: SandboxArgs) -> u8 {
    let key = match args.api_key {
        Some(key) => key,
        None => match std::fs::read_to_string(key::default_key_file()) {
            Ok(key) => key.trim().to_string(),
            Err(e) => {
                eprintln!(
                    "cellbox: error: no API key: give --api-key or E2B_API_KEY ({}: {e})",
                    key::default_key_file().display()
                );
                return EXIT_SANDBOX_ERROR;
            }
        },
    };
    let client = Client {
        http: reqwest::Client::new(),
        url: args.api_url,
        key,
    };
    let done = match args.command {
        SandboxCommand::List {
            state,
            metadata,
            format,
        } => list(&client, state, &metadata, format).await.map(|()| None),
        SandboxCommand::Kill { ids, all } => kill(&client, ids, all).await.map(|()| None),
        SandboxCommand::Logs {
            id,
            follow,
            level,
            format,
        } => logs(&client, &id, follow, level, format)
            .await
            .map(|()| None),
        SandboxCommand::Metrics { id, follow, format } => {
            metrics(&client, &id, follow, format).await.map(|()| None)
        }
        SandboxCommand::Spawn {
            template,
            timeout,
            keep,
        } => spawn(&client, &template, timeout, keep).await,
        SandboxCommand::Connect { id } => connect(&client, &id).await,
    };
    match done {
        Ok(Some(code)) => u8::try_from(code).unwrap_or(EXIT_SANDBOX_ERROR),
        Ok(None) => EXIT_OK,
        Err(failure) => {
            eprintln!("cellbox: error: {failure}");
            EXIT_SANDBOX_ERROR
        }
    }
}

/// Every sandbox matching the filters, all pages.
async fn sandboxes(
    client: &Client,
    state: Option<String>,
    metadata: &[String],
) -> Result<Vec<Value>, Failure> {
    for pair in metadata {
        if !pair.contains('=') {
            return Err(format!("--metadata {pair:?}: expected KEY=VALUE"));
        }
    }
    let mut query = Vec::new();
    if let Some(state) = state {
        query.push(("state", state));
    }
    if !metadata.is_empty() {
        let encoded: Vec<String> = metadata
            .iter()
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                format!("{}={}", percent_encode(k), percent_encode(v))
            })
            .collect();
        query.push(("metadata", encoded.join("&")));
    }
    let list = client
        .call(reqwest::Method::GET, "/v2/sandboxes", &query)
        .await?;
    Ok(list.and_then(|v| v.as_array().cloned()).unwrap_or_default())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a command ends with: nothing, or the exit code of a shell it ran.
type Done = Result<Option<i32>, Failure>;

async fn spawn(client: &Client, template: &str, timeout: u64, keep: bool) -> Done {
    let body = serde_json::json!({"templateID": template, "timeout": timeout,
        "metadata": {"spawned-by": "cellbox sandbox spawn"}});
    let created = client
        .send(reqwest::Method::POST, "/sandboxes", Some(body))
        .await?
        .unwrap_or_default();
    let (Some(id), Some(token)) = (
        created["sandboxID"].as_str(),
        created["envdAccessToken"].as_str(),
    ) else {
        return Err(format!("the server created no sandbox: {created}"));
    };
    let after = if keep { "leave it running" } else { "kill it" };
    eprintln!("cellbox: sandbox {id} (exit the shell to {after})");
    let code = terminal::attach(&client.target(id, token)).await;
    if !keep {
        let _ = client
            .call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), &[])
            .await;
    }
    code.map(Some)
}

async fn connect(client: &Client, id: &str) -> Done {
    let info = client
        .call(reqwest::Method::GET, &format!("/sandboxes/{id}"), &[])
        .await?
        .unwrap_or_default();
    let Some(token) = info["envdAccessToken"].as_str() else {
        return Err(format!("the server gave no access token for {id}"));
    };
    if info["state"] == "paused" {
        let path = format!("/sandboxes/{id}/connect");
        client
            .send(reqwest::Method::POST, &path, Some(serde_json::json!({})))
            .await?;
    }
    terminal::attach(&client.target(id, token)).await.map(Some)
}

async fn list(
    client: &Client,
    state: Option<String>,
    metadata: &[String],
    format: Format,
) -> Result<(), Failure> {
    let all = sandboxes(client, state, metadata).await?;
    let mut out = std::io::stdout().lock();
    if let Format::Json = format {
        let _ = writeln!(out, "{}", Value::Array(all));
        return Ok(());
    }
    if all.is_empty() {
        eprintln!("cellbox: no sandboxes");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<22} {:<20} {:<8} {:<28} {:<28} METADATA",
        "ID", "TEMPLATE", "STATE", "STARTED", "ENDS"
    );
    for s in &all {
        let text = |key: &str| s[key].as_str().unwrap_or("").to_string();
        let metadata = s["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<22} {:<20} {:<8} {:<28} {:<28} {metadata}",
            text("sandboxID"),
            text("templateID"),
            text("state"),
            text("startedAt"),
            text("endAt")
        );
    }
    Ok(())
}

async fn kill(client: &Client, mut ids: Vec<String>, all: bool) -> Result<(), Failure> {
    if all {
        ids = sandboxes(client, None, &[])
            .await?
            .iter()
            .filter_map(|s| s["sandboxID"].as_str().map(str::to_owned))
            .collect();
    }
    let mut failures = Vec::new();
    for id in &ids {
        match client
            .call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), &[])
            .await
        {
            Ok(_) => eprintln!("cellbox: killed {id}"),
            Err(failure) => failures.push(format!("{id}: {failure}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn logs(
    client: &Client,
    id: &str,
    follow: bool,
    level: Level,
    format: Format,
) -> Result<(), Failure> {
    let path = format!("/v2/sandboxes/{id}/logs");
    let mut cursor: Option<String> = None;
    loop {
        // Following ends with the sandbox, after its last entries (its log
        // stays readable).
        let ended = follow
            && client
                .call(reqwest::Method::GET, &format!("/sandboxes/{id}"), &[])
                .await
                .is_err();
        let mut query = vec![("level", level.name().to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let answer = client.call(reqwest::Method::GET, &path, &query).await?;
        let entries = answer
            .and_then(|v| v["logs"].as_array().cloned())
            .unwrap_or_default();
        let mut out = std::io::stdout().lock();
        for entry in &entries {
            let _ = match format {
                Format::Json => writeln!(out, "{entry}"),
                Format::Pretty => writeln!(
                    out,
                    "{} {:<5} {}",
                    entry["timestamp"].as_str().unwrap_or(""),
                    entry["level"].as_str().unwrap_or("").to_uppercase(),
                    entry["message"].as_str().unwrap_or("")
                ),
            };
            if let Some(seq) = entry["fields"]["seq"].as_str() {
                cursor = Some(seq.to_string());
            }
        }
        let _ = out.flush();
        drop(out);
        if !follow || ended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the samples of `id` newer than those printed; following, until
/// the sandbox ends.
async fn metrics(client: &Client, id: &str, follow: bool, format: Format) -> Result<(), Failure> {
    let path = format!("/sandboxes/{id}/metrics");
    let mut last_seen = 0;
    loop {
        let samples = match client.call(reqwest::Method::GET, &path, &[]).await {
            Ok(answer) => answer
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            // Following ends with the sandbox.
            Err(_) if follow && last_seen > 0 => return Ok(()),
            Err(failure) => return Err(failure),
        };
        let mut out = std::io::stdout().lock();
        for sample in &samples {
            let at = sample["timestampUnix"].as_u64().unwrap_or(0);
            if at <= last_seen {
                continue;
            }
            last_seen = at;
            let mib = |key: &str| sample[key].as_u64().unwrap_or(0) >> 20;
            let _ = match format {
                Format::Json => writeln!(out, "{sample}"),
                Format::Pretty => writeln!(
                    out,
                    "{}  CPU {:>6.2}% of {} | memory {:>5} / {} MiB | disk {:>5} / {} MiB",
                    sample["timestamp"].as_str().unwrap_or(""),
                    sample["cpuUsedPct"].as_f64().unwrap_or(0.0),
                    sample["cpuCount"].as_u64().unwrap_or(0),
                    mib("memUsed"),
                    mib("memTotal"),
                    mib("diskUsed"),
                    mib("diskTotal"),
                ),
            };
        }
        let _ = out.flush();
        drop(out);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
