//! Shell commands in the guest (`/bin/sh -c`): run to completion with
//! [`GuestClient::run_command`], or started in the background with
//! [`GuestClient::start_command`] and driven through a [`CommandHandle`].

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
pub use cellbox_guest_init::protocol::{CommandInfo, Stream};
use cellbox_guest_init::protocol::{FILE_CHUNK, Failure, Op, PtySize, ReplyBody};
use tokio::time::Instant;

use super::GuestClient;
use super::client::{GUEST_GRACE, Replies, failure};
use crate::error::{Error, Result};

/// Receives a command's output as it arrives.
pub type OutputCallback<'a> = dyn FnMut(Stream, &str) + Send + 'a;

/// How a command runs.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// Its working folder (default: the user's home).
    pub cwd: Option<String>,
    /// The account it runs as, `root` say (default: the sandbox's `user`,
    /// uid 1000). Whoever it runs as holds no capabilities.
    pub user: Option<String>,
    /// Variables added to guest-init's environment.
    pub env: BTreeMap<String, String>,
    /// After this the command's process group is killed and the call fails
    /// with [`Error::Timeout`]; `None` lets it run as long as it likes.
    pub timeout: Option<Duration>,
    /// Runs a started command in a terminal of this size (its output then
    /// comes as stdout; its input is typed into the terminal).
    pub pty: Option<PtySize>,
}

impl CommandOptions {
    /// These options with the working folder `cwd`.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// These options with the variable `key=value` set.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// These options with the account `user` (`"root"`, say).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// These options with a timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// These options with a terminal of `cols` × `rows` (started commands).
    pub fn pty(mut self, cols: u16, rows: u16) -> Self {
        self.pty = Some(PtySize { cols, rows });
        self
    }

    fn op(&self, cmd: &str, background: bool) -> Op {
        let (cmd, cwd, env) = (cmd.to_string(), self.cwd.clone(), self.env.clone());
        let user = self.user.clone();
        let timeout_ms = self
            .timeout
            .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX));
        if background {
            Op::StartCommand {
                cmd,
                cwd,
                env,
                timeout_ms,
                user,
                pty: self.pty,
            }
        } else {
            Op::RunCommand {
                cmd,
                cwd,
                env,
                timeout_ms,
                user,
            }
        }
    }
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandResult {
    /// Its standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Its standard error (invalid UTF-8 replaced).
    pub stderr: String,
    /// Its exit code; 128 + the signal number if a signal ended it.
    pub exit_code: i32,
}

impl CommandResult {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// A command started with [`GuestClient::start_command`]. Dropping it does
/// not stop the command; [`CommandHandle::kill`] does.
#[derive(Debug)]
pub struct CommandHandle {
    client: GuestClient,
    pid: u32,
    replies: Replies,
    timeout: Option<Duration>,
    started: Instant,
}

impl CommandHandle {
    /// The command's process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Writes `data` to the command's stdin (waits while the command does
    /// not read).
    pub async fn send_stdin(&self, data: &[u8]) -> Result<()> {
        self.client.send_stdin(self.pid, data).await
    }

    /// Closes the command's stdin, so that it reads end-of-file.
    pub async fn close_stdin(&self) -> Result<()> {
        self.client.close_stdin(self.pid).await
    }

    /// Resizes the command's terminal (one started with
    /// [`CommandOptions::pty`]).
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.client.resize_pty(self.pid, cols, rows).await
    }

    /// Kills the command and everything in its process group (nothing
    /// happens if it has already ended); [`CommandHandle::wait`] then
    /// returns exit code 137.
    pub async fn kill(&self) -> Result<()> {
        match self.client.kill_command(self.pid).await {
            Err(Error::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Waits for the command to end and returns its output.
    pub async fn wait(self) -> Result<CommandResult> {
        self.wait_with_output(&mut |_, _| {}).await
    }

    /// Like [`CommandHandle::wait`], also passing each piece of output to
    /// `on_output` as it arrives.
    pub async fn wait_with_output(
        mut self,
        on_output: &mut OutputCallback<'_>,
    ) -> Result<CommandResult> {
        let deadline = self.timeout.map(|t| self.started + t + GUEST_GRACE);
        finish(&mut self.replies, self.timeout, deadline, on_output).await
    }
}

impl GuestClient {
    /// Runs `cmd` with `/bin/sh -c` to completion, passing its output to
    /// `on_output` as it arrives. A non-zero exit is not an error; running
    /// past `options.timeout` is ([`Error::Timeout`], the command killed).
    pub async fn run_command(
        &self,
        cmd: &str,
        options: &CommandOptions,
        on_output: &mut OutputCallback<'_>,
    ) -> Result<CommandResult> {
        let deadline = options.timeout.map(|t| Instant::now() + t + GUEST_GRACE);
        let mut replies = self.request(options.op(cmd, false)).await?;
        finish(&mut replies, options.timeout, deadline, on_output).await
    }

    /// Starts `cmd` with `/bin/sh -c` in the background, its stdin a pipe
    /// fed through the returned handle.
    pub async fn start_command(
        &self,
        cmd: &str,
        options: &CommandOptions,
    ) -> Result<CommandHandle> {
        let started = Instant::now();
        let mut replies = self.request(options.op(cmd, true)).await?;
        match replies.recv().await {
            Some(ReplyBody::CommandStarted { pid }) => Ok(CommandHandle {
                client: self.clone(),
                pid,
                replies,
                timeout: options.timeout,
                started,
            }),
            Some(other) => Err(failure(other)),
            None => Err(closed()),
        }
    }

    /// The commands running in the guest, started or foreground.
    pub async fn list_commands(&self) -> Result<Vec<CommandInfo>> {
        match self.call(Op::ListCommands).await? {
            ReplyBody::Commands { commands } => Ok(commands),
            other => Err(failure(other)),
        }
    }

    /// Writes `data` to the stdin of the started command `pid` (waits while
    /// the command does not read).
    pub async fn send_stdin(&self, pid: u32, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(FILE_CHUNK) {
            let data = BASE64.encode(chunk);
            self.done(Op::SendStdin {
                pid,
                data,
                eof: false,
            })
            .await?;
        }
        Ok(())
    }

    /// Closes the stdin of the started command `pid`.
    /// Resizes the terminal of the started command `pid`.
    pub async fn resize_pty(&self, pid: u32, cols: u16, rows: u16) -> Result<()> {
        let size = PtySize { cols, rows };
        self.done(Op::ResizePty { pid, size }).await
    }

    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        let data = String::new();
        self.done(Op::SendStdin {
            pid,
            data,
            eof: true,
        })
        .await
    }

    /// Kills the running command `pid` and its process group
    /// ([`Error::NotFound`] if no command of that id runs).
    pub async fn kill_command(&self, pid: u32) -> Result<()> {
        self.done(Op::KillCommand { pid }).await
    }
}

fn closed() -> Error {
    Error::SandboxDied {
        reason: "the guest closed the connection during a command".into(),
    }
}

/// Gathers a command's output until its exit.
async fn finish(
    replies: &mut Replies,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    on_output: &mut OutputCallback<'_>,
) -> Result<CommandResult> {
    let mut result = CommandResult::default();
    let mut decoders = [Utf8Decoder::default(), Utf8Decoder::default()];
    let guard = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(guard);
    let mut emit = |stream: Stream, text: String, result: &mut CommandResult| {
        if text.is_empty() {
            return;
        }
        on_output(stream, &text);
        match stream {
            Stream::Stdout => result.stdout.push_str(&text),
            Stream::Stderr => result.stderr.push_str(&text),
        }
    };
    loop {
        let reply = tokio::select! {
            reply = replies.recv() => reply.ok_or_else(closed)?,
            () = &mut guard => {
                return Err(Error::SandboxDied {
                    reason: format!(
                        "the guest did not end the command within {:?}",
                        timeout.unwrap_or_default() + GUEST_GRACE
                    ),
                });
            }
        };
        match reply {
            ReplyBody::CommandOutput { stream, data } => {
                let bytes = BASE64.decode(data).map_err(|e| Error::SandboxDied {
                    reason: format!("the guest sent command output that is not base64: {e}"),
                })?;
                let text = decoders[stream as usize].push(&bytes);
                emit(stream, text, &mut result);
            }
            ReplyBody::CommandExit { code } => {
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let rest = decoders[stream as usize].finish();
                    emit(stream, rest, &mut result);
                }
                result.exit_code = code;
                return Ok(result);
            }
            ReplyBody::CommandStarted { .. } => {}
            ReplyBody::Failed {
                failure: Failure::Timeout,
                ..
            } => {
                return Err(Error::Timeout {
                    after: timeout.unwrap_or_default(),
                    restarted: false,
                });
            }
            other => return Err(failure(other)),
        }
    }
}

/// Turns a byte stream into text, keeping a character split across chunks
/// whole.
#[derive(Debug, Default)]
struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// The text `bytes` complete; an unfinished character waits for more.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left, an unfinished character replaced.
    fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let mut decoder = Utf8Decoder::default();
        let bytes = "héllo → wörld".as_bytes();
        let mut text = String::new();
        for byte in bytes {
            text.push_str(&decoder.push(std::slice::from_ref(byte)));
        }
        text.push_str(&decoder.finish());
        assert_eq!(text, "héllo → wörld");
        assert_eq!(decoder.push(b"a\xffb\xe2\x86"), "a\u{fffd}b");
        assert_eq!(decoder.finish(), "\u{fffd}");
    }
}
