//! Failures of the sandbox itself. An exception raised by the user's code is
//! not one of these: it is data, in [`crate::Execution::error`].

use std::time::Duration;

use crate::executor::Backend;

/// What went wrong with the sandbox (not with the user's code).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cell ran past its timeout and was stopped.
    #[error("the cell or command did not finish within {after:?} and was stopped{}", if *.restarted { "; the session was restarted and its state is lost" } else { "" })]
    Timeout { after: Duration, restarted: bool },

    /// Another task interrupted the cell ([`crate::Interrupt`]).
    #[error("the cell was interrupted{}", if *.restarted { "; the session was restarted and its state is lost" } else { "" })]
    Interrupted { restarted: bool },

    /// The backend cannot run on this machine or in this build.
    #[error("the {backend} backend is not available: {reason}")]
    Unavailable { backend: Backend, reason: String },

    /// A guest artefact (interpreter, image, kernel) is missing, broken or could not be built.
    #[error("{what}: {reason}")]
    Artifact { what: String, reason: String },

    /// The sandbox stopped unexpectedly.
    #[error("the sandbox died: {reason}")]
    SandboxDied { reason: String },

    /// No such file, folder or context in the sandbox.
    #[error("not found: {0}")]
    NotFound(String),

    /// The caller asked for something that cannot be done.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A limit on how many of something may exist at once was reached.
    #[error("{0}")]
    LimitReached(String),

    /// The session was closed; start a new one.
    #[error("the session is closed")]
    Closed,

    /// An I/O error on the host, or one the guest's operating system reported.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] with a sentence saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A short, stable name for the kind of failure (used in JSON output).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Timeout { .. } => "timeout",
            Error::Interrupted { .. } => "interrupted",
            Error::Unavailable { .. } => "unavailable",
            Error::Artifact { .. } => "artifact",
            Error::SandboxDied { .. } => "sandbox_died",
            Error::NotFound(_) => "not_found",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::LimitReached(_) => "limit_reached",
            Error::Closed => "closed",
            Error::Io { .. } => "io",
        }
    }
}

/// `Result` with cellbox's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
