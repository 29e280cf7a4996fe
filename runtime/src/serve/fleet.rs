//! The sandboxes behind one `cellbox serve`: created, found, listed, paused,
//! resumed and killed by the control-plane API ([`super::api`]), reached by
//! the sandbox traffic it routes ([`super::gateway`]), and ended or paused at
//! their timeouts by a reaper task.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;

use super::sandbox_log::{Level, SandboxLog};
use crate::error::{Error, Result};
use crate::lock;
use crate::sandbox::{Sandbox, SandboxMetrics, SandboxOptions, Snapshot};

/// How often the reaper looks at timeouts and samples metrics.
const REAP_EVERY: Duration = Duration::from_millis(250);
/// How often a running sandbox's metrics are sampled (E2B: every 5 s).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Metrics samples kept per sandbox (an hour's worth).
const SAMPLES_KEPT: usize = 720;
/// Ended sandboxes whose logs stay readable.
const ENDED_KEPT: usize = 100;

/// What happens to a sandbox at its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// It is killed (E2B's default).
    Kill,
    /// It is paused, and can be resumed later.
    Pause,
}

/// What a new sandbox is to be.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The template asked for (any of the SDKs' default names).
    pub template: String,
    /// Seconds until its timeout.
    pub timeout: Duration,
    /// What happens at the timeout.
    pub on_timeout: OnTimeout,
    /// Whether traffic to it while paused resumes it.
    pub auto_resume: bool,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
    /// Environment variables of its code and commands.
    pub env_vars: BTreeMap<String, String>,
    /// What it may reach on the network.
    pub network: crate::NetworkPolicy,
    /// Whether its own servers answer requests without its traffic token
    /// (E2B's `allowPublicTraffic`, true by default).
    pub public_traffic: bool,
    /// The `Host` its servers see (E2B's `maskRequestHost`; `${PORT}`: the
    /// port's number); `None`: the one the request came with.
    pub mask_request_host: Option<String>,
    /// Volumes shown in it.
    pub volumes: Vec<MountedVolume>,
    /// The template built with `cellbox template build` it is made from
    /// (`None`: the default template).
    pub custom_template: Option<String>,
    /// What it starts from, if not the template itself.
    pub snapshot: Option<Snapshot>,
}

/// A volume shown in a sandbox: its name (as E2B's `volumeMounts` give
/// it) and its folder on the host, and where the sandbox sees it.
#[derive(Debug, Clone)]
pub struct MountedVolume {
    pub name: String,
    pub mount: crate::VolumeMount,
}

/// Running or paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
}

/// One sandbox of the fleet.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    /// Its secret for envd and the code interpreter (`X-Access-Token`).
    pub token: String,
    /// Its secret for traffic to its ports (`E2B-Traffic-Access-Token`):
    /// the code interpreter's (E2B's code-interpreter SDK sends only it for
    /// contexts), and its own servers' when it allows no public traffic.
    pub traffic_token: String,
    pub spec: Spec,
    pub sandbox: Sandbox,
    /// The code-interpreter API (E2B's port 49999) of this sandbox.
    pub code: Router,
    /// envd (E2B's port 49983) of this sandbox.
    pub envd: Router,
    pub started_at: SystemTime,
    /// What it may reach now (its spec's, until `update_network`).
    network: Mutex<crate::NetworkPolicy>,
    pub log: SandboxLog,
    pub limits: Limits,
    timing: Mutex<Timing>,
    samples: Mutex<VecDeque<SandboxMetrics>>,
}

/// The sizes a sandbox gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
}

#[derive(Debug)]
struct Timing {
    state: State,
    /// When it times out (running) or when it did (paused).
    end_at: SystemTime,
    last_sample: Option<SystemTime>,
}

impl Entry {
    /// What it may reach on the network now.
    pub fn network(&self) -> crate::NetworkPolicy {
        lock(&self.network).clone()
    }

    /// Replaces its network rules while it runs.
    pub async fn update_network(&self, network: crate::NetworkPolicy) -> Result<()> {
        self.sandbox.update_network(network.clone()).await?;
        *lock(&self.network) = network;
        Ok(())
    }

    /// Running or paused.
    pub fn state(&self) -> State {
        lock(&self.timing).state
    }

    /// When it times out.
    pub fn end_at(&self) -> SystemTime {
        lock(&self.timing).end_at
    }

    /// Metrics sampled between `start` and `end` (each if given); a fresh
    /// sample if none was taken yet.
    pub async fn metrics(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> Result<Vec<SandboxMetrics>> {
        if lock(&self.samples).is_empty() {
            self.sample().await?;
        }
        Ok(lock(&self.samples)
            .iter()
            .filter(|m| {
                start.is_none_or(|s| m.timestamp >= s) && end.is_none_or(|e| m.timestamp <= e)
            })
            .cloned()
            .collect())
    }

    async fn sample(&self) -> Result<()> {
        let metrics = self.sandbox.metrics().await?;
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(metrics);
        Ok(())
    }
}

/// Why a sandbox could not be found.
#[derive(Debug)]
pub enum Missing {
    /// No sandbox has had this id (or it ended long ago).
    Unknown,
    /// It ended: killed, or at its timeout.
    Ended,
}

/// The sandboxes, by id.
#[derive(Debug)]
pub struct Fleet {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Logs of recently ended sandboxes.
    ended: Mutex<VecDeque<(String, SandboxLog)>>,
    /// Options every new sandbox starts from.
    base: SandboxOptions,
    /// Most sandboxes at once (running and paused).
    max_sandboxes: usize,
    /// Where the sandboxes' own servers are reached (E2B's sandbox domain).
    domain: std::sync::OnceLock<String>,
}

impl Fleet {
    /// An empty fleet whose sandboxes start from `base`; at most
    /// `max_sandboxes` at once. Starts its reaper (it ends with the fleet).
    pub fn new(base: SandboxOptions, max_sandboxes: usize) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            entries: Mutex::default(),
            ended: Mutex::default(),
            base,
            max_sandboxes,
            domain: std::sync::OnceLock::new(),
        });
        tokio::spawn(reap(Arc::downgrade(&fleet)));
        fleet
    }

    /// Names the domain under which the sandboxes' servers are reached:
    /// `{port}-{id}.{domain}` (the first name given stays).
    pub fn set_domain(&self, domain: impl Into<String>) {
        let _ = self.domain.set(domain.into());
    }

    /// The domain the sandboxes' servers are reached under, once known.
    pub fn domain(&self) -> Option<&str> {
        self.domain.get().map(String::as_str)
    }

    /// The options every sandbox starts from.
    pub fn base_options(&self) -> &SandboxOptions {
        &self.base
    }

    /// Creates and starts a sandbox.
    pub async fn create(&self, spec: Spec) -> Result<Arc<Entry>> {
        self.check_room()?;
        let mut options = self.base.clone().with_inactivity_timeout(None);
        options.metadata = spec.metadata.clone();
        options.env_vars.extend(spec.env_vars.clone());
        options.network = spec.network.clone();
        options.template = spec.custom_template.clone();
        options.volumes = spec.volumes.iter().map(|v| v.mount.clone()).collect();
        let sandbox = match &spec.snapshot {
            Some(snapshot) => Sandbox::from_snapshot(snapshot, options).await?,
            None => Sandbox::create(options).await?,
        };
        let origin = match &spec.snapshot {
            Some(snapshot) => format!("a snapshot of sandbox {}", snapshot.source()),
            None => format!("template {}", spec.template),
        };
        self.adopt(sandbox, spec, &origin).await
    }

    /// `count` copies of `parent` with `spec` (its timeout and the like),
    /// each its own success or error: whole copies (processes and all)
    /// where its backend makes them, else new sandboxes from a snapshot of
    /// its files and Python state, taken once in `scratch`.
    pub async fn fork(
        &self,
        parent: &Entry,
        spec: Spec,
        count: u32,
        scratch: impl FnOnce() -> Result<std::path::PathBuf>,
    ) -> Result<Vec<Result<Arc<Entry>>>> {
        if self.check_room().is_err() {
            return Ok((0..count).map(|_| Err(self.full())).collect());
        }
        let origin = format!("a copy of sandbox {}", parent.id);
        let spec = Spec {
            snapshot: None,
            ..spec
        };
        if let Some(first) = parent.sandbox.fork_whole().await? {
            let mut forks = vec![self.adopt(first, spec.clone(), &origin).await];
            for _ in 1..count {
                let copy = match self.check_room() {
                    Ok(()) => parent.sandbox.fork_whole().await,
                    Err(full) => Err(full),
                };
                forks.push(match copy {
                    Ok(Some(copy)) => self.adopt(copy, spec.clone(), &origin).await,
                    Ok(None) => Err(Error::Unavailable {
                        backend: parent.sandbox.backend().await,
                        reason: "the sandbox can no longer be copied whole".into(),
                    }),
                    Err(e) => Err(e),
                });
            }
            return Ok(forks);
        }
        let snapshot = parent.sandbox.snapshot(scratch()?).await?;
        let spec = Spec {
            snapshot: Some(snapshot.clone()),
            ..spec
        };
        let forks = (0..count).map(|_| self.create(spec.clone()));
        let forks = futures_util::future::join_all(forks).await;
        if let Err(e) = snapshot.delete() {
            tracing::warn!("removing a fork's passing snapshot: {e}");
        }
        Ok(forks)
    }

    /// Adds the running `sandbox`, made from `origin`, as a new entry (it
    /// is closed if the fleet has filled up meanwhile).
    async fn adopt(&self, sandbox: Sandbox, spec: Spec, origin: &str) -> Result<Arc<Entry>> {
        let limits = Limits {
            cpus: u32::from(sandbox.options().vcpus),
            memory_mib: sandbox.options().memory_mib,
            disk_mib: sandbox.options().disk_mib,
        };
        let id = super::random_id("a sandbox id")?;
        let log = SandboxLog::default();
        log.push(Level::Info, format!("sandbox {id} started from {origin}"));
        let now = SystemTime::now();
        let entry = Arc::new(Entry {
            token: super::guard::Access::generate_token()?,
            traffic_token: super::guard::Access::generate_token()?,
            code: super::code_interpreter::router(sandbox.clone()),
            envd: super::envd::router(sandbox.clone()),
            sandbox,
            started_at: now,
            network: Mutex::new(spec.network.clone()),
            log,
            limits,
            timing: Mutex::new(Timing {
                state: State::Running,
                end_at: now + spec.timeout,
                last_sample: None,
            }),
            samples: Mutex::default(),
            spec,
            id: id.clone(),
        });
        // Others may have been created meanwhile.
        if let Err(full) = self.check_room() {
            let _ = entry.sandbox.close().await;
            return Err(full);
        }
        lock(&self.entries).insert(id, entry.clone());
        Ok(entry)
    }

    fn check_room(&self) -> Result<()> {
        if lock(&self.entries).len() < self.max_sandboxes {
            return Ok(());
        }
        Err(self.full())
    }

    fn full(&self) -> Error {
        Error::LimitReached(format!(
            "this server already runs its maximum of {} sandboxes (--max-sandboxes); kill one first",
            self.max_sandboxes
        ))
    }

    /// The sandbox `id`.
    pub fn get(&self, id: &str) -> std::result::Result<Arc<Entry>, Missing> {
        if let Some(entry) = lock(&self.entries).get(id) {
            return Ok(entry.clone());
        }
        if lock(&self.ended).iter().any(|(ended, _)| ended == id) {
            return Err(Missing::Ended);
        }
        Err(Missing::Unknown)
    }

    /// The log of sandbox `id`, running or recently ended.
    pub fn log(&self, id: &str) -> Option<SandboxLog> {
        if let Some(entry) = lock(&self.entries).get(id) {
            return Some(entry.log.clone());
        }
        lock(&self.ended)
            .iter()
            .find(|(ended, _)| ended == id)
            .map(|(_, log)| log.clone())
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = lock(&self.entries).values().cloned().collect();
        all.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        all
    }

    /// Kills sandbox `id` at once; `false` if there is none.
    pub async fn kill(&self, id: &str, why: &str) -> bool {
        let Some(entry) = lock(&self.entries).remove(id) else {
            return false;
        };
        entry
            .log
            .push(Level::Info, format!("sandbox killed ({why})"));
        {
            let mut ended = lock(&self.ended);
            if ended.len() == ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back((entry.id.clone(), entry.log.clone()));
        }
        if let Err(error) = entry.sandbox.close().await {
            tracing::warn!(id, %error, "closing a killed sandbox");
        }
        true
    }

    /// Kills every sandbox (the server is stopping).
    pub async fn kill_all(&self) {
        let ids: Vec<String> = lock(&self.entries).keys().cloned().collect();
        for id in ids {
            self.kill(&id, "the server stopped").await;
        }
    }

    /// Sets the timeout to `timeout` from now.
    pub fn set_timeout(entry: &Entry, timeout: Duration) {
        lock(&entry.timing).end_at = SystemTime::now() + timeout;
        entry.log.push(
            Level::Info,
            format!("timeout set to {}s from now", timeout.as_secs()),
        );
    }

    /// Extends the timeout to at least `timeout` from now.
    pub fn extend_timeout(entry: &Entry, timeout: Duration) {
        let mut timing = lock(&entry.timing);
        timing.end_at = timing.end_at.max(SystemTime::now() + timeout);
    }

    /// Pauses a running sandbox; `Ok(false)` if it was paused already.
    pub async fn pause(entry: &Entry) -> Result<bool> {
        if entry.state() == State::Paused {
            return Ok(false);
        }
        entry.sandbox.pause().await?;
        lock(&entry.timing).state = State::Paused;
        entry.log.push(Level::Info, "sandbox paused");
        Ok(true)
    }

    /// Resumes a paused sandbox with `timeout` from now; `Ok(false)` if it
    /// was running (its timeout is then extended to at least that).
    pub async fn resume(entry: &Entry, timeout: Duration) -> Result<bool> {
        if entry.state() == State::Running {
            Fleet::extend_timeout(entry, timeout);
            return Ok(false);
        }
        entry.sandbox.resume().await?;
        {
            let mut timing = lock(&entry.timing);
            timing.state = State::Running;
            timing.end_at = SystemTime::now() + timeout;
        }
        entry.log.push(Level::Info, "sandbox resumed");
        Ok(true)
    }

    /// One round of the reaper: sandboxes past their timeout are killed or
    /// paused; running ones are sampled every [`SAMPLE_EVERY`].
    async fn reap_once(&self) {
        let now = SystemTime::now();
        for entry in self.list() {
            let (state, end_at, last_sample) = {
                let timing = lock(&entry.timing);
                (timing.state, timing.end_at, timing.last_sample)
            };
            if state == State::Paused {
                continue;
            }
            if !entry.sandbox.is_running().await {
                entry
                    .log
                    .push(Level::Error, "the sandbox stopped by itself");
                self.kill(&entry.id, "it had stopped").await;
                continue;
            }
            if end_at <= now {
                match entry.spec.on_timeout {
                    OnTimeout::Kill => {
                        self.kill(&entry.id, "its timeout passed").await;
                    }
                    OnTimeout::Pause => {
                        if let Err(error) = Fleet::pause(&entry).await {
                            entry.log.push(
                                Level::Error,
                                format!("pausing at the timeout failed: {error}"),
                            );
                            self.kill(&entry.id, "it could not be paused at its timeout")
                                .await;
                        }
                    }
                }
                continue;
            }
            let due = last_sample
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= SAMPLE_EVERY);
            if due {
                lock(&entry.timing).last_sample = Some(now);
                if let Err(error) = entry.sample().await {
                    tracing::debug!(id = entry.id, %error, "sampling metrics");
                }
            }
        }
    }
}

/// The reaper: runs while the fleet exists.
async fn reap(fleet: std::sync::Weak<Fleet>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        fleet.reap_once().await;
    }
}
