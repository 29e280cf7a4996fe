//! The control plane's JSON, in E2B's field names (their OpenAPI spec, as
//! the SDKs' generated clients read and write it).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::super::clock::rfc3339;
use super::super::fleet::{Entry, State};
use super::super::sandbox_log::LogEntry;
use super::super::snapshots::Label;
use crate::sandbox::SandboxMetrics;

/// envd's version as the SDKs see it: cellbox's envd has every feature the
/// SDKs gate on up to it (file metadata, 0.6.2; entry info in watch events,
/// 0.6.3; watches that allow network mounts, 0.6.4).
pub const ENVD_VERSION: &str = "0.6.4";
/// Who created the sandboxes (E2B's `clientID`).
pub const CLIENT_ID: &str = "cellbox";

/// `POST /sandboxes` and `POST /v2/sandboxes`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds.
    pub timeout: Option<u64>,
    pub auto_pause: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    pub network: Option<NetworkConfig>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMountRequest>,
}

/// `volumeMounts[]`: a volume by name, and where the sandbox sees it.
#[derive(Debug, Deserialize)]
pub struct VolumeMountRequest {
    pub name: String,
    pub path: String,
}

/// The egress fields of `network` on create and of a network update.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Egress {
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
    #[serde(default)]
    pub rules: BTreeMap<String, Vec<NetworkRule>>,
    /// E2B's "bring your own SOCKS5 proxy" (refused: not supported).
    pub egress_proxy: Option<serde_json::Value>,
}

impl Egress {
    /// The library's rules, with or without internet access; `secrets`
    /// fill the rules' placeholders.
    fn policy(&self, internet: bool, secrets: crate::SecretSource) -> crate::NetworkPolicy {
        crate::NetworkPolicy {
            allow_internet_access: internet,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
            rules: host_rules(&self.rules),
            secrets: Some(secrets),
        }
    }
}

/// `network`: E2B's egress fields, whether the sandbox's servers answer
/// without its traffic token, and the `Host` they see.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(flatten)]
    pub egress: Egress,
    pub allow_public_traffic: Option<bool>,
    pub mask_request_host: Option<String>,
}

/// `PUT /sandboxes/{id}/network`: the egress fields, all replaced.
#[derive(Debug, Default, Deserialize)]
pub struct NetworkUpdate {
    #[serde(flatten)]
    pub egress: Egress,
    pub allow_internet_access: Option<bool>,
}

/// One of `rules`' entries (E2B's `SandboxNetworkRule`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetworkRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<NetworkTransform>,
}

/// E2B's `SandboxNetworkTransform`: headers set on matching requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetworkTransform {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// E2B's rules as the library's.
fn host_rules(
    rules: &BTreeMap<String, Vec<NetworkRule>>,
) -> BTreeMap<String, Vec<crate::namespace::network::HostRule>> {
    rules
        .iter()
        .map(|(host, rules)| {
            let rules = rules
                .iter()
                .map(|rule| crate::namespace::network::HostRule {
                    headers: rule
                        .transform
                        .as_ref()
                        .map(|t| t.headers.clone())
                        .unwrap_or_default(),
                })
                .collect();
            (host.clone(), rules)
        })
        .collect()
}

/// The refusal of E2B's SOCKS5 egress proxy option.
pub const NO_EGRESS_PROXY: &str = "network.egressProxy (tunnelling through a SOCKS5 proxy) \
     is not supported by cellbox serve";

impl NewSandbox {
    /// What the sandbox may reach: nothing unless internet access is asked
    /// for or `allowOut` names something (E2B's default is open; cellbox's
    /// is closed). `secrets` fill the rules' placeholders.
    pub fn network_policy(&self, secrets: crate::SecretSource) -> crate::NetworkPolicy {
        let internet = self.allow_internet_access == Some(true);
        match &self.network {
            Some(network) => network.egress.policy(internet, secrets),
            None => Egress::default().policy(internet, secrets),
        }
    }
}

impl NetworkUpdate {
    /// The sandbox's new rules. Omitted fields are cleared, as E2B does:
    /// internet access is then allowed (`denyOut` narrows it).
    pub fn network_policy(&self, secrets: crate::SecretSource) -> crate::NetworkPolicy {
        let internet = self.allow_internet_access.unwrap_or(true);
        self.egress.policy(internet, secrets)
    }
}

/// E2B's `SandboxNetworkConfig` in a sandbox's details.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInfo {
    allow_out: Vec<String>,
    deny_out: Vec<String>,
    rules: BTreeMap<String, Vec<NetworkRule>>,
    allow_public_traffic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask_request_host: Option<String>,
}

impl NetworkInfo {
    fn of(entry: &Entry) -> NetworkInfo {
        let network = entry.network();
        let rules = (network.rules.iter())
            .map(|(host, rules)| {
                let rules = rules
                    .iter()
                    .map(|rule| NetworkRule {
                        transform: Some(NetworkTransform {
                            headers: rule.headers.clone(),
                        }),
                    })
                    .collect();
                (host.clone(), rules)
            })
            .collect();
        NetworkInfo {
            allow_out: network.allow_out,
            deny_out: network.deny_out,
            rules,
            allow_public_traffic: entry.spec.public_traffic,
            mask_request_host: entry.spec.mask_request_host.clone(),
        }
    }
}

impl NewSandbox {
    /// The `Host` the sandbox's servers see (`${PORT}`: the port's number).
    pub fn mask_request_host(&self) -> Option<String> {
        self.network.as_ref()?.mask_request_host.clone()
    }

    /// Whether the sandbox's own servers answer anyone (E2B's default).
    pub fn public_traffic(&self) -> bool {
        let asked = self.network.as_ref().and_then(|n| n.allow_public_traffic);
        asked.unwrap_or(true)
    }
}

/// `autoResume`: a flag (v1) or `{"enabled": flag}` (v2).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AutoResume {
    Flag(bool),
    Config { enabled: bool },
}

impl AutoResume {
    pub fn enabled(&self) -> bool {
        match self {
            AutoResume::Flag(enabled) | AutoResume::Config { enabled } => *enabled,
        }
    }
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: u64,
}

/// `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    pub duration: Option<u64>,
}

/// `POST /sandboxes/{id}/connect` and `/resume`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    pub timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Default, Deserialize)]
pub struct ForkRequest {
    /// Seconds until the forks' timeout.
    pub timeout: Option<u64>,
    pub count: Option<u32>,
}

/// One fork's outcome: exactly one of the two.
#[derive(Debug, Serialize)]
pub struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxCreated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// E2B's `Error`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotRequest {
    pub name: Option<String>,
    /// Memory too (E2B's default); cellbox keeps files and Python state
    /// either way.
    pub memory: Option<bool>,
}

/// A snapshot (E2B's `SnapshotInfo`).
#[derive(Debug, Serialize)]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

impl SnapshotInfo {
    pub fn of(label: &Label) -> SnapshotInfo {
        SnapshotInfo {
            snapshot_id: label.reference(),
            // Only a named snapshot has a name.
            names: match label.name {
                Some(_) => vec![label.reference()],
                None => Vec::new(),
            },
        }
    }
}

/// A created or connected sandbox (E2B's `Sandbox`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
    traffic_access_token: String,
    domain: Option<String>,
}

impl SandboxCreated {
    /// `entry`, its servers reached under `domain`.
    pub fn of(entry: &Entry, domain: Option<&str>) -> SandboxCreated {
        SandboxCreated {
            template_id: entry.spec.template.clone(),
            sandbox_id: entry.id.clone(),
            client_id: CLIENT_ID,
            envd_version: ENVD_VERSION,
            envd_access_token: entry.token.clone(),
            traffic_access_token: entry.traffic_token.clone(),
            domain: domain.map(str::to_owned),
        }
    }
}

/// A sandbox in a list, or its details (E2B's `ListedSandbox` and
/// `SandboxDetail`; the access token only in the details).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u32,
    state: &'static str,
    envd_version: &'static str,
    metadata: BTreeMap<String, String>,
    allow_internet_access: bool,
    network: NetworkInfo,
    lifecycle: Lifecycle,
    volume_mounts: Vec<VolumeMountInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
}

/// E2B's `SandboxVolumeMount`.
#[derive(Debug, Serialize)]
struct VolumeMountInfo {
    name: String,
    path: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Lifecycle {
    on_timeout: &'static str,
    auto_resume: bool,
}

impl SandboxInfo {
    pub fn of(entry: &Entry, with_token: bool) -> SandboxInfo {
        SandboxInfo {
            template_id: entry.spec.template.clone(),
            sandbox_id: entry.id.clone(),
            client_id: CLIENT_ID,
            started_at: timestamp(entry.started_at),
            end_at: timestamp(entry.end_at()),
            cpu_count: entry.limits.cpus,
            memory_mb: entry.limits.memory_mib,
            disk_size_mb: entry.limits.disk_mib,
            state: state_name(entry.state()),
            envd_version: ENVD_VERSION,
            metadata: entry.spec.metadata.clone(),
            allow_internet_access: entry.network().allow_internet_access,
            network: NetworkInfo::of(entry),
            lifecycle: Lifecycle {
                on_timeout: match entry.spec.on_timeout {
                    super::super::fleet::OnTimeout::Kill => "kill",
                    super::super::fleet::OnTimeout::Pause => "pause",
                },
                auto_resume: entry.spec.auto_resume,
            },
            volume_mounts: (entry.spec.volumes.iter())
                .map(|v| VolumeMountInfo {
                    name: v.name.clone(),
                    path: v.mount.target.clone(),
                })
                .collect(),
            envd_access_token: with_token.then(|| entry.token.clone()),
        }
    }
}

/// E2B's name of a state.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Running => "running",
        State::Paused => "paused",
    }
}

/// One metrics sample (E2B's `SandboxMetric`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    timestamp: String,
    timestamp_unix: u64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

impl From<&SandboxMetrics> for Metric {
    fn from(m: &SandboxMetrics) -> Metric {
        Metric {
            timestamp: timestamp(m.timestamp),
            timestamp_unix: unix_seconds(m.timestamp),
            cpu_count: m.cpu_count,
            cpu_used_pct: (m.cpu_used_pct * 100.0).round() / 100.0,
            mem_used: m.mem_used,
            mem_total: m.mem_total,
            mem_cache: m.mem_cache,
            disk_used: m.disk_used,
            disk_total: m.disk_total,
        }
    }
}

/// A log entry (E2B's `SandboxLogEntry`).
#[derive(Debug, Serialize)]
pub struct LogLine {
    pub timestamp: String,
    pub message: String,
    pub level: &'static str,
    pub fields: BTreeMap<String, String>,
}

impl From<&LogEntry> for LogLine {
    fn from(e: &LogEntry) -> LogLine {
        LogLine {
            timestamp: timestamp(e.timestamp),
            message: e.message.clone(),
            level: e.level.as_str(),
            fields: BTreeMap::from([("seq".to_string(), e.seq.to_string())]),
        }
    }
}

impl LogLine {
    /// The entry as the JSON object envd writes as a log line, which E2B's
    /// CLI (`e2b sandbox logs`) parses: level, logger, message and fields.
    pub fn envd_line(&self) -> String {
        let mut line = serde_json::json!({
            "level": self.level,
            "logger": "cellbox",
            "message": self.message,
        });
        for (key, value) in &self.fields {
            line[key] = serde_json::json!(value);
        }
        line.to_string()
    }
}

/// RFC 3339 in UTC with microseconds.
pub fn timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(since.as_secs() as i64, Some(since.subsec_micros()))
}

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
