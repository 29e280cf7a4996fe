//! The messages between the host and `guest-init`, version [`VERSION`].
//!
//! The host sends [`Request`]s; `guest-init` answers each with one or more
//! [`Reply`]s carrying the request's `id`, the last of which is final
//! (see [`ReplyBody::is_final`]). Requests may overlap: file and command
//! requests are served while a cell runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version; `Hello` checks both sides agree.
pub const VERSION: u32 = 1;

/// File data moves in chunks of at most this many bytes.
pub const FILE_CHUNK: usize = 1 << 20;

/// The context that exists from the start.
pub const DEFAULT_CONTEXT: &str = "default";

/// The vsock port guest-init listens on inside the microVM.
pub const VSOCK_PORT: u32 = 1024;

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// What the host asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Checks versions; answered with [`ReplyBody::Hello`].
    Hello {
        version: u32,
    },
    /// Runs a cell in a context; streams output, results and an error, then
    /// [`ReplyBody::ExecuteDone`].
    Execute {
        context: String,
        code: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// After this, the kernel is interrupted (SIGINT) and the reply is
        /// [`Failure::Timeout`].
        timeout_ms: Option<u64>,
    },
    /// Interrupts the running cell of a context (KeyboardInterrupt).
    Interrupt {
        context: String,
    },
    CreateContext {
        cwd: Option<String>,
    },
    ListContexts,
    /// Clears a context's state (a fresh kernel).
    RestartContext {
        context: String,
    },
    RemoveContext {
        context: String,
    },
    /// Answered with [`ReplyBody::FileChunk`]s, the last one with `eof`.
    ReadFile {
        path: String,
    },
    /// Writes `data` (base64) to `path`, truncating first unless `append`.
    WriteFile {
        path: String,
        data: String,
        #[serde(default)]
        append: bool,
    },
    ListDir {
        path: String,
    },
    MakeDir {
        path: String,
    },
    Remove {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Stat {
        path: String,
    },
    /// Runs `cmd` with `/bin/sh -c`; streams [`ReplyBody::CommandOutput`],
    /// then [`ReplyBody::CommandExit`].
    RunCommand {
        cmd: String,
        cwd: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        timeout_ms: Option<u64>,
    },
    /// Stops every kernel and powers the guest off (or exits, in a namespace).
    Shutdown,
}

/// One answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub body: ReplyBody,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The content of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    Hello {
        version: u32,
        guest: String,
    },
    /// Cell output.
    Output {
        stream: Stream,
        text: String,
    },
    /// A rich result in the shape of `cellbox::CellResult`.
    Result {
        result: serde_json::Value,
    },
    /// The exception the cell raised.
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    ExecuteDone {
        execution_count: Option<u32>,
    },
    Context(ContextInfo),
    Contexts {
        contexts: Vec<ContextInfo>,
    },
    FileChunk {
        data: String,
        eof: bool,
    },
    Entries {
        entries: Vec<FileStat>,
    },
    Stat(FileStat),
    CommandOutput {
        stream: Stream,
        data: String,
    },
    CommandExit {
        code: i32,
    },
    Done,
    Failed {
        failure: Failure,
        message: String,
    },
}

impl ReplyBody {
    /// Whether this is the last reply to its request.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            ReplyBody::Output { .. }
                | ReplyBody::Result { .. }
                | ReplyBody::Error { .. }
                | ReplyBody::CommandOutput { .. }
                | ReplyBody::FileChunk { eof: false, .. }
        )
    }

    /// A [`ReplyBody::Failed`].
    pub fn failed(failure: Failure, message: impl Into<String>) -> Self {
        ReplyBody::Failed {
            failure,
            message: message.into(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The request could not be parsed or makes no sense.
    BadRequest,
    /// No such context, file or folder.
    NotFound,
    /// The cell or command ran past its timeout. For a cell, the kernel was
    /// interrupted and kept its state unless the message says it restarted.
    Timeout,
    /// The kernel process died; the next cell starts a fresh one.
    KernelDied,
    /// The protocol versions differ.
    Version,
    /// Anything else the guest's operating system refused.
    Io,
}

/// A context: one kernel with its own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    pub id: String,
    pub cwd: String,
}

/// What `stat` says about a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub name: String,
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub modified: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_snake_case_tags() {
        let request = Request {
            id: 1,
            op: Op::CreateContext {
                cwd: Some("/home/user".into()),
            },
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["op"]["type"], "create_context");
        let reply = ReplyBody::failed(Failure::KernelDied, "gone");
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["type"], "failed");
        assert_eq!(json["failure"], "kernel_died");
    }

    #[test]
    fn streamed_replies_are_not_final() {
        let output = ReplyBody::Output {
            stream: Stream::Stdout,
            text: "x".into(),
        };
        assert!(!output.is_final());
        assert!(
            !ReplyBody::FileChunk {
                data: String::new(),
                eof: false
            }
            .is_final()
        );
        assert!(
            ReplyBody::ExecuteDone {
                execution_count: Some(1)
            }
            .is_final()
        );
        assert!(ReplyBody::Done.is_final());
    }

    #[test]
    fn unknown_operations_are_rejected() {
        let parsed = serde_json::from_str::<Request>(r#"{"id": 1, "op": {"type": "format_disk"}}"#);
        assert!(parsed.is_err());
    }
}
