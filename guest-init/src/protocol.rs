//! The messages between the host and `guest-init`, version [`VERSION`].
//!
//! The host sends [`Request`]s; `guest-init` answers each with one or more
//! [`Reply`]s carrying the request's `id`, the last of which is final
//! (see [`ReplyBody::is_final`]). Requests may overlap: file and command
//! requests are served while a cell runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version; `Hello` checks both sides agree.
pub const VERSION: u32 = 2;

/// File data moves in chunks of at most this many bytes.
pub const FILE_CHUNK: usize = 1 << 20;

/// The context that exists from the start.
pub const DEFAULT_CONTEXT: &str = "default";

/// A tunnel's data moves in chunks of at most this many bytes.
pub const PORT_CHUNK: usize = 32 << 10;

/// How many [`ReplyBody::PortData`] chunks guest-init sends ahead of the
/// host's [`Op::PortAck`]s: a host that reads slowly holds up that tunnel
/// only (the host queues more replies per request than this).
pub const PORT_WINDOW: u32 = 8;

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
        /// Fresh random bytes (hex, at most 512) a microVM guest mixes into
        /// its kernel's pool: VMs restored from one snapshot must not share
        /// their random state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entropy: Option<String>,
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
        /// Older hosts send none: Python.
        #[serde(default)]
        language: Language,
    },
    ListContexts,
    /// Starts a context's kernel now rather than with its first cell;
    /// answered with [`ReplyBody::Done`] once it is ready.
    StartKernel {
        context: String,
    },
    /// Clears a context's state (a fresh kernel).
    RestartContext {
        context: String,
    },
    RemoveContext {
        context: String,
    },
    /// Answered with [`ReplyBody::FileChunk`]s, the last one with `eof`.
    /// With `length`, only that many bytes from `offset` are sent (fewer at
    /// the end of the file), so a reader can ask for one chunk at a time.
    ReadFile {
        path: String,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        length: Option<u64>,
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
    /// Creates a folder and its missing parents.
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
    /// Keeps string pairs on a file (extended attributes `user.e2b.*`, keys
    /// lowercased); answered with [`ReplyBody::Done`].
    SetMetadata {
        path: String,
        metadata: BTreeMap<String, String>,
    },
    /// Runs `cmd` with `/bin/sh -c` (in the user's home unless `cwd`);
    /// streams [`ReplyBody::CommandOutput`], then [`ReplyBody::CommandExit`].
    RunCommand {
        cmd: String,
        cwd: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        timeout_ms: Option<u64>,
        /// The account to run as (`root`, say); by default the sandbox's user.
        #[serde(default)]
        user: Option<String>,
    },
    /// Like [`Op::RunCommand`] but with its stdin open to
    /// [`Op::SendStdin`]: first [`ReplyBody::CommandStarted`], then the
    /// command's output, then [`ReplyBody::CommandExit`].
    StartCommand {
        cmd: String,
        cwd: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        timeout_ms: Option<u64>,
        /// The account to run as (`root`, say); by default the sandbox's user.
        #[serde(default)]
        user: Option<String>,
        /// Runs it in a terminal of this size (stdin, stdout and stderr are
        /// the terminal; its output comes as stdout).
        #[serde(default)]
        pty: Option<PtySize>,
    },
    /// Resizes the terminal of a command started with one; answered with
    /// [`ReplyBody::Done`].
    ResizePty {
        pid: u32,
        size: PtySize,
    },
    /// Watches a folder (and, if `recursive`, every folder below it):
    /// [`ReplyBody::WatchStarted`], then [`ReplyBody::FsEvents`] as things
    /// change, then [`ReplyBody::Done`] after [`Op::Unwatch`].
    WatchDir {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Ends a watch; answered with [`ReplyBody::Done`].
    Unwatch {
        watch: u32,
    },
    /// Writes `data` (base64) to a started command's stdin, then closes it if
    /// `eof`; answered with [`ReplyBody::Done`].
    SendStdin {
        pid: u32,
        #[serde(default)]
        data: String,
        #[serde(default)]
        eof: bool,
    },
    /// Kills a running command's process group; answered with
    /// [`ReplyBody::Done`] (the command's own request then ends).
    KillCommand {
        pid: u32,
    },
    /// The running commands, started and foreground; answered with
    /// [`ReplyBody::Commands`].
    ListCommands,
    /// Connects to `port` on the guest's loopback (a server started in the
    /// sandbox): [`ReplyBody::PortOpened`], then [`ReplyBody::PortData`] as
    /// the server sends (at most [`PORT_WINDOW`] chunks ahead of the host's
    /// [`Op::PortAck`]s), then [`ReplyBody::Done`] once it stops sending.
    OpenPort {
        port: u16,
    },
    /// Writes `data` (base64) to a tunnel, then ends what is sent through it
    /// if `eof`; answered with [`ReplyBody::Done`].
    PortSend {
        tunnel: u32,
        #[serde(default)]
        data: String,
        #[serde(default)]
        eof: bool,
    },
    /// The host passed on `chunks` more of a tunnel's [`ReplyBody::PortData`];
    /// answered with [`ReplyBody::Done`].
    PortAck {
        tunnel: u32,
        chunks: u32,
    },
    /// Closes a tunnel both ways; answered with [`ReplyBody::Done`] (its
    /// [`Op::OpenPort`] request then ends).
    ClosePort {
        tunnel: u32,
    },
    /// Stops every kernel and powers the guest off (or exits, in a namespace).
    Shutdown,
}

/// What happened to an entry of a watched folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsEventKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// One change, `name` relative to the watched folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEvent {
    pub name: String,
    pub kind: FsEventKind,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
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

/// What guest-init started with `--warm` prints on the console once its
/// default Python kernel has the data stack imported and it waits for the host.
pub const WARM_MARK: &str = "cellbox-guest-init: warm and waiting";

/// Milestones of a microVM guest's boot, in milliseconds of its boot clock
/// (`CLOCK_BOOTTIME`, which starts with the guest kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootClock {
    /// guest-init started (as PID 1).
    pub init_started_ms: u64,
    /// guest-init listened for the host.
    pub listening_ms: u64,
    /// guest-init answered `Hello`.
    pub hello_ms: u64,
}

impl BootClock {
    /// Now, in milliseconds of this machine's boot clock.
    pub fn now_ms() -> u64 {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
            .unwrap_or(0)
    }
}

/// The content of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    Hello {
        version: u32,
        guest: String,
        /// The guest's boot milestones (a microVM guest only).
        #[serde(default)]
        boot: Option<BootClock>,
    },
    /// Cell output.
    Output {
        stream: Stream,
        text: String,
    },
    /// The cell ran past its timeout and is being stopped (interrupted, or
    /// reporting its traceback): the host keeps waiting, since the guest is
    /// alive, only slow.
    Stopping,
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
    /// File data (base64); `eof` marks the last chunk of the reply: the end
    /// of the file, or of the range asked for.
    FileChunk {
        data: String,
        eof: bool,
    },
    Entries {
        entries: Vec<FileStat>,
    },
    Stat(Box<FileStat>),
    CommandOutput {
        stream: Stream,
        data: String,
    },
    /// The process id (in the guest) of a command [`Op::StartCommand`] started.
    CommandStarted {
        pid: u32,
    },
    /// A watch started ([`Op::WatchDir`]); [`Op::Unwatch`] ends it.
    WatchStarted {
        watch: u32,
    },
    /// Changes in a watched folder.
    FsEvents {
        events: Vec<FsEvent>,
    },
    /// A tunnel [`Op::OpenPort`] opened.
    PortOpened {
        tunnel: u32,
    },
    /// Data (base64) a tunnel's server sent.
    PortData {
        data: String,
    },
    /// The command ended with this code (128 + the signal if killed).
    CommandExit {
        code: i32,
    },
    Commands {
        commands: Vec<CommandInfo>,
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
                | ReplyBody::Stopping
                | ReplyBody::Result { .. }
                | ReplyBody::Error { .. }
                | ReplyBody::CommandOutput { .. }
                | ReplyBody::CommandStarted { .. }
                | ReplyBody::WatchStarted { .. }
                | ReplyBody::FsEvents { .. }
                | ReplyBody::PortOpened { .. }
                | ReplyBody::PortData { .. }
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
    #[serde(default)]
    pub language: Language,
}

/// The language a context's kernel runs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// IPython (`cellbox_kernel.py`).
    #[default]
    Python,
    /// Node.js (`cellbox_kernel.js`).
    Javascript,
    /// Node.js, the types stripped by TypeScript's compiler first.
    Typescript,
    /// One bash process (`cellbox_kernel_bash.py`).
    Bash,
    /// IRkernel, through the Jupyter bridge (`cellbox_kernel_jupyter.py`).
    R,
    /// JShell (`CellboxKernel.java`).
    Java,
}

impl Language {
    /// Every language, in the order contexts are listed.
    pub const ALL: [Language; 6] = [
        Language::Python,
        Language::Javascript,
        Language::Typescript,
        Language::Bash,
        Language::R,
        Language::Java,
    ];

    /// Its name as E2B spells it (`python`, `javascript`, `typescript`,
    /// `bash`, `r`, `java`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Typescript => "typescript",
            Language::Bash => "bash",
            Language::R => "r",
            Language::Java => "java",
        }
    }

    /// Reads a language as E2B's SDKs name it: any case, `js` and `ts` too.
    pub fn parse(name: &str) -> Option<Language> {
        match name.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Some(Language::Javascript),
            "typescript" | "ts" => Some(Language::Typescript),
            "bash" | "sh" | "shell" => Some(Language::Bash),
            "r" => Some(Language::R),
            "java" => Some(Language::Java),
            _ => None,
        }
    }

    /// The context a cell in this language runs in when none is named; it
    /// exists from the start, like [`DEFAULT_CONTEXT`] (Python's).
    pub fn default_context(self) -> &'static str {
        match self {
            Language::Python => DEFAULT_CONTEXT,
            other => other.name(),
        }
    }

    /// The language whose default context `id` is, if it is one.
    pub fn of_default_context(id: &str) -> Option<Language> {
        Language::ALL
            .into_iter()
            .find(|l| l.default_context() == id)
    }

    /// Whether `id` is one of the contexts that exist from the start.
    pub fn is_default_context(id: &str) -> bool {
        Language::of_default_context(id).is_some()
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Language {
    type Err = String;

    fn from_str(name: &str) -> Result<Language, String> {
        Language::parse(name).ok_or_else(|| {
            let names: Vec<_> = Language::ALL.iter().map(|l| l.name()).collect();
            format!(
                "the language \"{name}\" is not available (cellbox runs {})",
                names.join(", ")
            )
        })
    }
}

/// A running command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Its process id in the guest (also its process group).
    pub pid: u32,
    /// The shell command line.
    pub cmd: String,
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
    /// Its owner's and group's names (their numbers where the guest has
    /// no name for them).
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
    /// For a symbolic link, the absolute path it resolves to (the other
    /// fields describe that file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// What was kept on it with [`Op::SetMetadata`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_read_as_e2b_spells_them() {
        for (name, language) in [
            ("python", Language::Python),
            ("js", Language::Javascript),
            (" JavaScript ", Language::Javascript),
            ("ts", Language::Typescript),
            ("R", Language::R),
            ("java", Language::Java),
        ] {
            assert_eq!(name.parse::<Language>(), Ok(language), "{name}");
        }
        let refused = "cobol".parse::<Language>().unwrap_err();
        assert!(
            refused.contains("\"cobol\"") && refused.contains("javascript"),
            "{refused}"
        );
        assert_eq!(Language::Javascript.default_context(), "javascript");
        assert!(Language::is_default_context(DEFAULT_CONTEXT));
        assert!(!Language::is_default_context("ctx-1"));
        // A context from an older guest (no language) is Python's.
        let old: ContextInfo = serde_json::from_str(r#"{"id":"a","cwd":"/"}"#).unwrap();
        assert_eq!(old.language, Language::Python);
    }

    #[test]
    fn wire_names_are_snake_case_tags() {
        let request = Request {
            id: 1,
            op: Op::CreateContext {
                cwd: Some("/home/user".into()),
                language: Language::Typescript,
            },
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["op"]["type"], "create_context");
        assert_eq!(json["op"]["language"], "typescript");
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
        assert!(!ReplyBody::CommandStarted { pid: 7 }.is_final());
    }

    #[test]
    fn new_fields_have_defaults() {
        let read: Op = serde_json::from_str(r#"{"type": "read_file", "path": "/x"}"#).unwrap();
        assert_eq!(
            read,
            Op::ReadFile {
                path: "/x".into(),
                offset: 0,
                length: None
            }
        );
        let stdin: Op = serde_json::from_str(r#"{"type": "send_stdin", "pid": 3}"#).unwrap();
        assert_eq!(
            stdin,
            Op::SendStdin {
                pid: 3,
                data: String::new(),
                eof: false
            }
        );
    }

    #[test]
    fn unknown_operations_are_rejected() {
        let parsed = serde_json::from_str::<Request>(r#"{"id": 1, "op": {"type": "format_disk"}}"#);
        assert!(parsed.is_err());
    }
}
