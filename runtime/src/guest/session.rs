//! The part of an [`crate::Executor`] both heavy backends share: a
//! [`GuestClient`] running cells in the guest's default context.

use std::time::Duration;

use cellbox_guest_init::protocol::DEFAULT_CONTEXT;

use super::GuestClient;
use crate::error::{Error, Result};
use crate::execution::Execution;
use crate::executor::{EventCallback, Executor, RunOptions};

/// An executor backed by the full guest (namespace sandbox or microVM): files,
/// commands and contexts are reachable through its [`GuestClient`].
pub trait GuestExecutor: Executor + Send {
    /// The connection to `guest-init`.
    fn guest(&self) -> Result<&GuestClient>;
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
