//! `cellbox sandbox list | kill | logs`: E2B's sandbox CLI commands against
//! a running `cellbox serve` (its control plane, with its API key).

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use cellbox::serve::DEFAULT_API_PORT;
use cellbox::serve::api::key;

use super::{EXIT_OK, EXIT_SANDBOX_ERROR};

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
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>, Failure> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let response = self
            .http
            .request(method, &url)
            .header("X-API-Key", &self.key)
            .query(query)
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
        } => list(&client, state, &metadata, format).await,
        SandboxCommand::Kill { ids, all } => kill(&client, ids, all).await,
        SandboxCommand::Logs {
            id,
            follow,
            level,
            format,
        } => logs(&client, &id, follow, level, format).await,
    };
    match done {
        Ok(()) => EXIT_OK,
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
        if !follow {
            return Ok(());
        }
        // Following ends with the sandbox (its log stays readable).
        if client
            .call(reqwest::Method::GET, &format!("/sandboxes/{id}"), &[])
            .await
            .is_err()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
