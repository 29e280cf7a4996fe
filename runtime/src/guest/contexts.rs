//! Contexts: separate kernels in one guest, each with its own language,
//! state and working folder. Cells run in one with [`GuestClient::execute`].

pub use cellbox_guest_init::protocol::{ContextInfo, Language};
use cellbox_guest_init::protocol::{Op, ReplyBody};

use super::GuestClient;
use super::client::failure;
use crate::error::Result;

impl GuestClient {
    /// Creates a `language` context working in `cwd` (default: the guest's
    /// home folder, which must exist); its kernel starts with its first cell.
    pub async fn create_context(
        &self,
        cwd: Option<&str>,
        language: Language,
    ) -> Result<ContextInfo> {
        match self
            .call(Op::CreateContext {
                cwd: cwd.map(str::to_string),
                language,
            })
            .await?
        {
            ReplyBody::Context(info) => Ok(info),
            other => Err(failure(other)),
        }
    }

    /// Every context in E2B's order: each language's default context (in
    /// [`Language::ALL`]'s order), then the others as they were created.
    pub async fn list_contexts(&self) -> Result<Vec<ContextInfo>> {
        match self.call(Op::ListContexts).await? {
            ReplyBody::Contexts { mut contexts } => {
                contexts.sort_by_key(|c| creation_rank(&c.id));
                Ok(contexts)
            }
            other => Err(failure(other)),
        }
    }

    /// Starts a context's kernel now rather than with its first cell, and
    /// returns once it is ready (at once if it runs).
    pub async fn start_kernel(&self, id: &str) -> Result<()> {
        self.done(Op::StartKernel { context: id.into() }).await
    }

    /// Clears a context's state: its kernel is stopped and the next cell
    /// starts a fresh one ([`crate::Error::NotFound`] for an unknown id).
    pub async fn restart_context(&self, id: &str) -> Result<()> {
        self.done(Op::RestartContext { context: id.into() }).await
    }

    /// Interrupts the cell running in a context (a `KeyboardInterrupt`).
    pub async fn interrupt_context(&self, id: &str) -> Result<()> {
        self.done(Op::Interrupt { context: id.into() }).await
    }

    /// Stops a context's kernel and forgets the context
    /// ([`crate::Error::NotFound`] for an unknown id).
    pub async fn remove_context(&self, id: &str) -> Result<()> {
        self.done(Op::RemoveContext { context: id.into() }).await
    }
}

/// Where the context `id` comes in a listing: default contexts first, by
/// language, then created ones (`ctx-N`) by N.
fn creation_rank(id: &str) -> (usize, u64, String) {
    let default = Language::ALL
        .iter()
        .position(|language| language.default_context() == id);
    let created = id.strip_prefix("ctx-").and_then(|n| n.parse().ok());
    (
        default.unwrap_or(Language::ALL.len()),
        created.unwrap_or(u64::MAX),
        id.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_listed_defaults_first_then_as_created() {
        let mut ids = vec!["ctx-10", "typescript", "ctx-2", "default", "bash", "odd"];
        ids.sort_by_key(|id| creation_rank(id));
        assert_eq!(
            ids,
            ["default", "typescript", "bash", "ctx-2", "ctx-10", "odd"]
        );
    }
}
