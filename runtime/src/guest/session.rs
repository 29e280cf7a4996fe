//! What both heavy backends share: a [`GuestClient`] running cells in the
//! guest's default context ([`GuestSession`]), and with it the whole
//! [`Executor`] — a backend only says what it is and how to stop what runs
//! the guest ([`GuestBackend`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cellbox_guest_init::protocol::DEFAULT_CONTEXT;

use super::GuestClient;
use super::control::GuestControl;
use crate::error::{Error, Result};
use crate::execution::Execution;
use crate::executor::{Backend, EventCallback, Executor, RunOptions};

/// An executor backed by the full guest (namespace sandbox or microVM): files,
/// commands and contexts are reachable through its [`GuestClient`].
#[async_trait]
pub trait GuestExecutor: Executor + Send {
    /// The connection to `guest-init`.
    fn guest(&self) -> Result<&GuestClient>;
    /// Pause, resume and usage, from outside the guest.
    fn control(&self) -> Arc<dyn GuestControl>;
    /// A copy of the whole running guest, where the backend can make one
    /// (see [`GuestBackend::copy_whole`]).
    async fn copy_whole(&mut self) -> Result<Option<Box<dyn GuestExecutor>>>;
    /// Saves the whole running guest into the new folder `dir`, where the
    /// backend can (see [`GuestBackend::save_whole`]).
    async fn save_whole(&mut self, dir: &Path) -> Result<bool>;
}

/// A heavy backend: a [`GuestSession`] plus whatever runs the guest.
#[async_trait]
pub trait GuestBackend: Send {
    /// Which backend this is.
    fn kind(&self) -> Backend;
    /// The session with `guest-init`.
    fn session(&self) -> &GuestSession;
    /// The same, mutable.
    fn session_mut(&mut self) -> &mut GuestSession;
    /// Pause, resume and usage, from outside the guest.
    fn control(&self) -> Arc<dyn GuestControl>;
    /// Stops what runs the guest (guest-init was already asked to shut down).
    async fn stop_guest(&mut self) -> Result<()>;
    /// A copy of the whole running guest, memory and processes included;
    /// `None` where the backend cannot make one (then forks go through
    /// pickled state).
    async fn copy_whole(&mut self) -> Result<Option<Box<dyn GuestExecutor>>> {
        Ok(None)
    }
    /// Saves the whole running guest (memory, processes, disk writes) into
    /// the new folder `dir`, from which the backend can start copies;
    /// `false` where it cannot (then snapshots keep pickled state).
    async fn save_whole(&mut self, _dir: &Path) -> Result<bool> {
        Ok(false)
    }
}

#[async_trait]
impl<T: GuestBackend + 'static> GuestExecutor for T {
    fn guest(&self) -> Result<&GuestClient> {
        self.session().client()
    }

    fn control(&self) -> Arc<dyn GuestControl> {
        GuestBackend::control(self)
    }

    async fn copy_whole(&mut self) -> Result<Option<Box<dyn GuestExecutor>>> {
        GuestBackend::copy_whole(self).await
    }

    async fn save_whole(&mut self, dir: &Path) -> Result<bool> {
        GuestBackend::save_whole(self, dir).await
    }
}

#[async_trait]
impl<T: GuestBackend> Executor for T {
    fn backend(&self) -> Backend {
        self.kind()
    }

    async fn execute(
        &mut self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        self.session().execute(code, options, on_event).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.session().restart().await
    }

    async fn close(&mut self) -> Result<()> {
        self.session_mut().shutdown().await;
        self.stop_guest().await
    }
}

/// A connected guest and the session's default cell timeout.
#[derive(Debug)]
pub struct GuestSession {
    client: Option<GuestClient>,
    default_timeout: Duration,
}

impl GuestSession {
    /// A session over `client`.
    pub fn new(client: GuestClient, default_timeout: Duration) -> GuestSession {
        GuestSession {
            client: Some(client),
            default_timeout,
        }
    }

    /// The connection to `guest-init` ([`Error::Closed`] after shutdown).
    pub fn client(&self) -> Result<&GuestClient> {
        self.client.as_ref().ok_or(Error::Closed)
    }

    /// Runs `code` in the default context.
    pub async fn execute(
        &self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        self.client()?
            .execute(
                DEFAULT_CONTEXT,
                code,
                options,
                self.default_timeout,
                on_event,
            )
            .await
    }

    /// Restarts the default context's kernel (its state is lost).
    pub async fn restart(&self) -> Result<()> {
        self.client()?.restart_default().await
    }

    /// Asks guest-init to shut down; later calls fail with [`Error::Closed`].
    pub async fn shutdown(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.shutdown().await;
        }
    }
}
