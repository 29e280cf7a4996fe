//! Shell commands: run with `/bin/sh -c`, output streamed, exit code last.
//! Running commands are kept in a [`Commands`] registry, so that they can be
//! listed and killed, and started ones fed on their stdin.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::confine::User;
use crate::lock;
use crate::output::{self, Budget};
use crate::protocol::{CommandInfo, Failure, PtySize, ReplyBody, Stream};

/// The running commands of one host connection, by process id (each command
/// leads its own process group, so the id is also the group's).
#[derive(Debug, Default)]
pub struct Commands {
    table: Mutex<BTreeMap<u32, Arc<Running>>>,
}

#[derive(Debug)]
struct Running {
    cmd: String,
    /// The write end of a started command's stdin (its terminal, if it has
    /// one); `None` once closed (and always for foreground commands, whose
    /// stdin is `/dev/null`).
    stdin: Mutex<Option<File>>,
    /// Its terminal's controlling side, if it runs in one (for resizing).
    pty: Option<File>,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub cmd: &'a str,
    pub cwd: Option<&'a str>,
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Whether stdin is a pipe the host writes to ([`Commands::send_stdin`]),
    /// announced first with [`ReplyBody::CommandStarted`].
    pub background: bool,
    /// Who it runs as (and, without `cwd`, where: their home).
    pub user: &'a User,
    /// Runs it in a new terminal of this size, as the leader of a new
    /// session whose controlling terminal it is.
    pub pty: Option<PtySize>,
}

/// A new terminal of `size`: its controlling side and the side the command gets.
fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).map_err(std::io::Error::from)?;
    Ok((pty.master, pty.slave))
}

/// Sets the size of the terminal whose controlling side is `master`.
fn set_size(master: &File, size: PtySize) -> std::io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the valid pointer given; the
    // descriptor is a terminal's controlling side we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn not_running(pid: u32) -> ReplyBody {
    ReplyBody::failed(Failure::NotFound, format!("no running command {pid}"))
}

/// Whether `pid` (a child) has exited, without reaping it (so that its id
/// cannot be reused while it is still in the registry); with `block`, waits.
fn has_exited(pid: u32, block: bool) -> bool {
    let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitid(2) on our own child with a zeroed siginfo_t that it
        // fills in; WNOWAIT leaves the reaping to `Child::wait`.
        let (result, exited) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let result = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags);
            (result, info.si_pid() != 0)
        };
        if result == 0 {
            return exited;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true; // not our child any more: nothing to wait for
        }
    }
}

/// Waits until `pid` has exited (not reaped); past `deadline` it is killed
/// and `true` returned. Its output may have ended before it does.
fn wait_exited(pid: u32, deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        has_exited(pid, true);
        return false;
    };
    while !has_exited(pid, false) {
        if Instant::now() >= deadline {
            kill_group(pid);
            has_exited(pid, true);
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// SIGKILL to the process group `pid` leads.
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on a process group created for one of our commands,
    // whose leader is not yet reaped (so the id is not reused).
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

impl Commands {
    pub fn new() -> Commands {
        Commands::default()
    }

    /// Runs a command to completion, sending its output and then its exit
    /// code (or a timeout failure, after killing its process group). A
    /// background command first gets a [`ReplyBody::CommandStarted`].
    pub fn run(&self, spec: Spec<'_>, send: &mut dyn FnMut(ReplyBody)) {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(spec.cmd).envs(spec.env);
        let mut pty_master = None;
        match spec.pty {
            Some(size) => {
                let (master, slave) = match open_pty(size) {
                    Ok(pair) => pair,
                    Err(e) => {
                        return send(ReplyBody::failed(
                            Failure::Io,
                            format!("opening a terminal: {e}"),
                        ));
                    }
                };
                let copies = (slave.try_clone(), slave.try_clone());
                let (Ok(out), Ok(err)) = copies else {
                    return send(ReplyBody::failed(
                        Failure::Io,
                        "copying the terminal's descriptor",
                    ));
                };
                command
                    .stdin(Stdio::from(slave))
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    .env(
                        "TERM",
                        spec.env
                            .get("TERM")
                            .map_or("xterm-256color", String::as_str),
                    );
                // SAFETY: setsid and ioctl are async-signal-safe and touch
                // no memory of the parent; fd 0 is the terminal's command side.
                unsafe {
                    command.pre_exec(|| {
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                pty_master = Some(File::from(master));
            }
            None => {
                command
                    .stdin(if spec.background {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
            }
        }
        // A relative `cwd` is under the user's home, as in E2B.
        let home = Some(spec.user.home.as_str()).filter(|home| Path::new(home).is_dir());
        let home = Path::new(home.unwrap_or("/"));
        command.current_dir(spec.cwd.map_or(home.to_path_buf(), |cwd| home.join(cwd)));
        crate::confine::apply(&mut command, spec.user);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let failure = if e.kind() == std::io::ErrorKind::NotFound {
                    Failure::NotFound
                } else {
                    Failure::Io
                };
                return send(ReplyBody::failed(
                    failure,
                    format!("starting /bin/sh -c {:?}: {e}", spec.cmd),
                ));
            }
        };
        // The command's copies of its terminal close with `command`: the
        // output ends when the command's side is closed by all.
        drop(command);
        let pid = child.id();
        let (stdin, pty, output) = match pty_master {
            Some(master) => {
                let copies = (master.try_clone(), master.try_clone());
                let (Ok(stdin), Ok(output)) = copies else {
                    kill_group(pid);
                    let _ = child.wait();
                    return send(ReplyBody::failed(
                        Failure::Io,
                        "copying the terminal's descriptor",
                    ));
                };
                (Some(stdin), Some(master), Some(output))
            }
            None => (
                child
                    .stdin
                    .take()
                    .map(|pipe| File::from(OwnedFd::from(pipe))),
                None,
                None,
            ),
        };
        let running = Running {
            cmd: spec.cmd.to_string(),
            stdin: Mutex::new(stdin),
            pty,
        };
        lock(&self.table).insert(pid, Arc::new(running));
        if spec.background {
            send(ReplyBody::CommandStarted { pid });
        }

        let (tx, rx) = mpsc::sync_channel(output::QUEUE);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let terminal = output.map_or(Ok(()), |master| {
            output::forward(master, tx.clone(), |b| (Stream::Stdout, b.to_vec()))
        });
        let forwarded = terminal
            .and_then(|()| {
                stdout.map_or(Ok(()), |pipe| {
                    output::forward(pipe, tx.clone(), |b| (Stream::Stdout, b.to_vec()))
                })
            })
            .and_then(|()| {
                stderr.map_or(Ok(()), |pipe| {
                    output::forward(pipe, tx.clone(), |b| (Stream::Stderr, b.to_vec()))
                })
            });
        if let Err(e) = forwarded {
            kill_group(pid);
            let _ = child.wait();
            lock(&self.table).remove(&pid);
            let message = format!("guest-init cannot start a thread for the command: {e}");
            return send(ReplyBody::failed(Failure::Io, message));
        }
        let mut budget = Budget::new();
        drop(tx);
        let deadline = spec.timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        loop {
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            // Checked before reading: output without pause never lets it time out.
            let next = if wait.is_zero() {
                Err(mpsc::RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(wait)
            };
            match next {
                Ok((stream, bytes)) => {
                    if let Some(bytes) = budget.bytes(bytes) {
                        let data = BASE64.encode(bytes);
                        send(ReplyBody::CommandOutput { stream, data });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => {
                    timed_out = true;
                    kill_group(pid);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        if !timed_out {
            timed_out = wait_exited(pid, deadline);
        } else {
            has_exited(pid, true);
        }
        // Out of the registry before the id is freed by reaping. (Its stdin
        // closes with the last reference: a write may still be under way.)
        lock(&self.table).remove(&pid);
        let status = child.wait();
        if timed_out {
            return send(ReplyBody::failed(
                Failure::Timeout,
                format!(
                    "the command did not finish within {:?} and was killed",
                    spec.timeout.unwrap_or_default()
                ),
            ));
        }
        match status {
            Ok(status) => send(ReplyBody::CommandExit {
                code: status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            }),
            Err(e) => send(ReplyBody::failed(
                Failure::Io,
                format!("waiting for the command: {e}"),
            )),
        }
    }

    /// Writes `data` (base64) to a started command's stdin, then closes it
    /// if `eof`. May block while the command does not read.
    pub fn send_stdin(&self, pid: u32, data: &str, eof: bool) -> ReplyBody {
        let bytes = match BASE64.decode(data) {
            Ok(bytes) => bytes,
            Err(e) => {
                return ReplyBody::failed(Failure::BadRequest, format!("data is not base64: {e}"));
            }
        };
        let Some(running) = lock(&self.table).get(&pid).cloned() else {
            return not_running(pid);
        };
        let mut stdin = lock(&running.stdin);
        if !bytes.is_empty() {
            let Some(pipe) = stdin.as_mut() else {
                return ReplyBody::failed(
                    Failure::BadRequest,
                    format!("the stdin of command {pid} is closed"),
                );
            };
            if let Err(e) = pipe.write_all(&bytes).and_then(|()| pipe.flush()) {
                return ReplyBody::failed(
                    Failure::Io,
                    format!("writing to the stdin of command {pid}: {e}"),
                );
            }
        }
        if eof {
            stdin.take();
        }
        ReplyBody::Done
    }

    /// Resizes the terminal of a command that runs in one.
    pub fn resize(&self, pid: u32, size: PtySize) -> ReplyBody {
        let Some(running) = lock(&self.table).get(&pid).cloned() else {
            return not_running(pid);
        };
        let Some(master) = &running.pty else {
            return ReplyBody::failed(
                Failure::BadRequest,
                format!("command {pid} has no terminal"),
            );
        };
        match set_size(master, size) {
            Ok(()) => ReplyBody::Done,
            Err(e) => {
                ReplyBody::failed(Failure::Io, format!("resizing the terminal of {pid}: {e}"))
            }
        }
    }

    /// Kills a running command's process group.
    pub fn kill(&self, pid: u32) -> ReplyBody {
        let table = lock(&self.table);
        if !table.contains_key(&pid) {
            return not_running(pid);
        }
        kill_group(pid);
        ReplyBody::Done
    }

    /// The running commands, by process id.
    pub fn list(&self) -> ReplyBody {
        let commands = lock(&self.table)
            .iter()
            .map(|(&pid, running)| CommandInfo {
                pid,
                cmd: running.cmd.clone(),
            })
            .collect();
        ReplyBody::Commands { commands }
    }

    /// Kills every running command (their requests then end).
    pub fn kill_all(&self) {
        for &pid in lock(&self.table).keys() {
            kill_group(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        cmd: &'a str,
        env: &'a BTreeMap<String, String>,
        timeout: Option<Duration>,
        background: bool,
    ) -> Spec<'a> {
        // The test runner's own account: no change of identity.
        static ME: std::sync::OnceLock<User> = std::sync::OnceLock::new();
        let me = ME.get_or_init(User::current);
        Spec {
            cmd,
            cwd: Some("/"),
            env,
            timeout,
            background,
            user: me,
            pty: None,
        }
    }

    fn collect(cmd: &str, timeout: Option<Duration>) -> Vec<ReplyBody> {
        let mut replies = Vec::new();
        let env = BTreeMap::from([("GREETING".into(), "hi".into())]);
        Commands::new().run(spec(cmd, &env, timeout, false), &mut |r| replies.push(r));
        replies
    }

    fn stdout(replies: &[ReplyBody]) -> Vec<u8> {
        let mut stdout = Vec::new();
        for reply in replies {
            if let ReplyBody::CommandOutput {
                stream: Stream::Stdout,
                data,
            } = reply
            {
                stdout.extend(BASE64.decode(data).unwrap());
            }
        }
        stdout
    }

    #[test]
    fn a_relative_working_folder_is_under_the_home() {
        let env = BTreeMap::new();
        let mut relative = spec("pwd", &env, None, false);
        relative.cwd = Some("tmp"); // the runner's `User::current` lives in /
        let mut replies = Vec::new();
        Commands::new().run(relative, &mut |r| replies.push(r));
        assert_eq!(stdout(&replies), b"/tmp\n");
    }

    #[test]
    fn output_then_exit_code() {
        let replies = collect("echo $GREETING; echo oops >&2; exit 3", None);
        assert_eq!(stdout(&replies), b"hi\n");
        assert!(replies.iter().any(|r| matches!(
            r,
            ReplyBody::CommandOutput {
                stream: Stream::Stderr,
                ..
            }
        )));
        assert_eq!(replies.last(), Some(&ReplyBody::CommandExit { code: 3 }));
    }

    #[test]
    fn a_slow_command_is_killed_at_its_timeout() {
        let started = Instant::now();
        let replies = collect("sleep 30", Some(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            replies.last(),
            Some(ReplyBody::Failed {
                failure: Failure::Timeout,
                ..
            })
        ));
    }

    #[test]
    fn a_command_printing_forever_is_cut_at_the_limit_and_still_times_out() {
        let started = Instant::now();
        let replies = collect("yes", Some(Duration::from_secs(2)));
        assert!(started.elapsed() < Duration::from_secs(10));
        let printed = stdout(&replies);
        let limit = crate::output::limit();
        assert_eq!(&printed[..2], b"y\n");
        assert!(
            printed.len() > limit && printed.len() < limit + 100,
            "{} bytes",
            printed.len()
        );
        assert!(
            String::from_utf8_lossy(&printed).ends_with(&crate::output::Budget::new().marker())
        );
        assert!(matches!(
            replies.last(),
            Some(ReplyBody::Failed {
                failure: Failure::Timeout,
                ..
            })
        ));
    }

    #[test]
    fn a_started_command_reads_stdin_is_listed_and_can_be_killed() {
        let commands = Arc::new(Commands::new());
        let (tx, rx) = mpsc::channel();
        let runner = {
            let commands = commands.clone();
            std::thread::spawn(move || {
                let env = BTreeMap::new();
                commands.run(spec("cat; sleep 30", &env, None, true), &mut |r| {
                    let _ = tx.send(r);
                });
            })
        };
        let Ok(ReplyBody::CommandStarted { pid }) = rx.recv() else {
            panic!("no start")
        };
        let ReplyBody::Commands { commands: listed } = commands.list() else {
            panic!()
        };
        assert_eq!(
            listed,
            [CommandInfo {
                pid,
                cmd: "cat; sleep 30".into()
            }]
        );
        assert_eq!(
            commands.send_stdin(pid, &BASE64.encode("abc"), true),
            ReplyBody::Done
        );
        assert!(matches!(
            commands.send_stdin(pid, &BASE64.encode("more"), false),
            ReplyBody::Failed {
                failure: Failure::BadRequest,
                ..
            }
        ));
        let output = rx.recv().unwrap();
        assert_eq!(stdout(&[output]), b"abc");
        assert_eq!(commands.kill(pid), ReplyBody::Done);
        let last = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(last, ReplyBody::CommandExit { code: 128 + 9 });
        runner.join().unwrap();
        assert_eq!(commands.list(), ReplyBody::Commands { commands: vec![] });
        assert!(matches!(
            commands.kill(pid),
            ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn a_command_in_a_terminal_has_it_as_its_own_and_can_resize_it() {
        let commands = Arc::new(Commands::new());
        let (tx, rx) = mpsc::channel();
        let runner = {
            let commands = commands.clone();
            std::thread::spawn(move || {
                let env = BTreeMap::new();
                let mut spec = spec(
                    "tty; stty size; read line; echo got $line; stty size",
                    &env,
                    None,
                    true,
                );
                spec.pty = Some(PtySize { cols: 80, rows: 24 });
                commands.run(spec, &mut |r| {
                    let _ = tx.send(r);
                });
            })
        };
        let Ok(ReplyBody::CommandStarted { pid }) = rx.recv() else {
            panic!("no start")
        };
        let mut seen = Vec::new();
        let read_until = |seen: &mut Vec<u8>, needle: &str| {
            while !String::from_utf8_lossy(seen).contains(needle) {
                let reply = rx.recv_timeout(Duration::from_secs(10)).expect(needle);
                seen.extend(stdout(&[reply]));
            }
        };
        read_until(&mut seen, "24 80");
        assert!(
            String::from_utf8_lossy(&seen).contains("/dev/pts/"),
            "{seen:?}"
        );
        assert_eq!(
            commands.resize(
                pid,
                PtySize {
                    cols: 100,
                    rows: 40
                }
            ),
            ReplyBody::Done
        );
        assert_eq!(
            commands.send_stdin(pid, &BASE64.encode("hello\n"), false),
            ReplyBody::Done
        );
        read_until(&mut seen, "40 100");
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(
            text.contains("hello") && text.contains("got hello"),
            "echoed, then read: {text}"
        );
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
                ReplyBody::CommandExit { code } => break assert_eq!(code, 0),
                ReplyBody::CommandOutput { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        runner.join().unwrap();
        assert!(matches!(
            commands.resize(pid, PtySize { cols: 1, rows: 1 }),
            ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            }
        ));
    }
}
