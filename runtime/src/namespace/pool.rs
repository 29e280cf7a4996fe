//! Namespace sandboxes started before they are asked for: a
//! [`NamespacePool`] keeps a few spares of one configuration running (each
//! with its Python kernel already forked from the warm template), hands one
//! out at once and starts its replacement in the background.
//!
//! A spare is a whole sandbox of its own (namespaces, control group, disk,
//! kernel), started exactly as [`NamespaceExecutor::start`] would and never
//! used before it is handed out. Dropping the pool stops its spares.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::executor::{NamespaceConfig, NamespaceExecutor};
use crate::error::{Error, Result};

/// Spares of one [`NamespaceConfig`]; see the [module](self).
///
/// ```no_run
/// # async fn demo() -> cellbox::Result<()> {
/// use cellbox::{Executor, NamespaceConfig, NamespacePool};
/// let pool = NamespacePool::new(NamespaceConfig::default(), 1);
/// pool.ready().await?; // optional: wait until the spare runs
/// let mut sandbox = pool.start().await?; // the spare; another starts behind it
/// sandbox.run("import numpy, pandas").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NamespacePool {
    shared: Arc<Shared>,
    filler: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    config: NamespaceConfig,
    size: usize,
    spares: Mutex<Vec<NamespaceExecutor>>,
    /// Why the last spare failed to start, until one starts again.
    failure: Mutex<Option<String>>,
    /// A spare was taken (or the pool is new): the filler looks again.
    taken: Notify,
    /// The filler added a spare or failed to.
    changed: Notify,
}

/// The longest wait between attempts while spares fail to start.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl NamespacePool {
    /// Keeps `spares` sandboxes of `config` running, started from now on in
    /// the background. Needs a Tokio runtime.
    pub fn new(config: NamespaceConfig, spares: usize) -> NamespacePool {
        let shared = Arc::new(Shared {
            config,
            size: spares,
            spares: Mutex::new(Vec::with_capacity(spares)),
            failure: Mutex::new(None),
            taken: Notify::new(),
            changed: Notify::new(),
        });
        let filler = tokio::spawn(fill(shared.clone()));
        NamespacePool { shared, filler }
    }

    /// A sandbox of the pool's configuration: a spare if one is running,
    /// else one started now. Either way a replacement starts behind it.
    pub async fn start(&self) -> Result<NamespaceExecutor> {
        let spare = loop {
            let Some(mut spare) = crate::lock(&self.shared.spares).pop() else {
                break None;
            };
            // One that died while waiting (killed, out of memory) is dropped.
            if spare.is_running() {
                break Some(spare);
            }
        };
        self.shared.taken.notify_one();
        match spare {
            Some(spare) => Ok(spare),
            None => NamespaceExecutor::start(self.shared.config.clone()).await,
        }
    }

    /// Waits until every spare runs; fails with the reason if starting
    /// one fails (the pool keeps trying, less and less often).
    pub async fn ready(&self) -> Result<()> {
        loop {
            let changed = self.shared.changed.notified();
            if crate::lock(&self.shared.spares).len() >= self.shared.size {
                return Ok(());
            }
            if let Some(reason) = crate::lock(&self.shared.failure).clone() {
                return Err(Error::Unavailable {
                    backend: crate::Backend::Namespace,
                    reason: format!("the pool's spare sandbox did not start: {reason}"),
                });
            }
            changed.await;
        }
    }

    /// Whether a sandbox started with `config` would be one of this pool's
    /// (the same in everything but progress reporting).
    pub fn serves(&self, config: &NamespaceConfig) -> bool {
        let own = &self.shared.config;
        own.cache_dir == config.cache_dir
            && own.memory_limit == config.memory_limit
            && own.max_processes == config.max_processes
            && own.cpu_time_limit == config.cpu_time_limit
            && own.default_timeout == config.default_timeout
            && own.output_limit == config.output_limit
            && own.disk_limit == config.disk_limit
            && own.network == config.network
            && own.template_layers == config.template_layers
            && own.volumes == config.volumes
            && own.warm == config.warm
    }

    /// How many spares run now.
    pub fn spares(&self) -> usize {
        crate::lock(&self.shared.spares).len()
    }

    /// Stops the spares, the one being started included, and returns once
    /// they are gone (processes, disks, folders); the pool starts no more.
    /// Dropping the pool does the same without waiting, which a process
    /// about to exit cannot afford.
    pub async fn close(&self) {
        self.filler.abort();
        while !self.filler.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let spares = std::mem::take(&mut *crate::lock(&self.shared.spares));
        drop(spares);
    }
}

impl Drop for NamespacePool {
    fn drop(&mut self) {
        // The filler's future holds the other reference to the spares:
        // dropped with it, they stop (as does a spare being started).
        self.filler.abort();
    }
}

/// Starts spares until there are enough, then waits for one to be taken.
async fn fill(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        while crate::lock(&shared.spares).len() < shared.size {
            match start_spare(&shared.config).await {
                Ok(spare) => {
                    crate::lock(&shared.spares).push(spare);
                    *crate::lock(&shared.failure) = None;
                    backoff = Duration::from_millis(250);
                    shared.changed.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!("a spare namespace sandbox did not start: {e}");
                    *crate::lock(&shared.failure) = Some(e.to_string());
                    shared.changed.notify_waiters();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        shared.taken.notified().await;
    }
}

/// A sandbox whose Python kernel is ready, so that its first cell runs at once.
async fn start_spare(config: &NamespaceConfig) -> Result<NamespaceExecutor> {
    use crate::guest::GuestBackend;
    let spare = NamespaceExecutor::start(config.clone()).await?;
    let python = crate::guest::Language::Python.default_context();
    spare.session().client()?.start_kernel(python).await?;
    Ok(spare)
}
