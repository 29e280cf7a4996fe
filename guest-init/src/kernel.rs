//! One kernel process (`cellbox_kernel.py` on IPython for Python,
//! `cellbox_kernel.js` on Node.js for JavaScript and TypeScript,
//! `cellbox_kernel_bash.py` around one bash for bash,
//! `cellbox_kernel_jupyter.py` around IRkernel for R, `CellboxKernel.java`
//! on JShell for Java): requests go
//! in on its fd 3 as JSON lines, events come back on its fd 4; whatever it or
//! its children write to fds 1 and 2 is forwarded as raw output.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::frame::MAX_FRAME_LEN;
use crate::output::{self, Budget};
use crate::protocol::{Failure, Language, ReplyBody, Stream};
use crate::zygote::{KernelRequest, Zygote};

/// Where the Python kernel driver lives in the guest.
pub const DRIVER: &str = "/usr/lib/cellbox/cellbox_kernel.py";
/// Where the JavaScript and TypeScript kernel driver lives in the guest.
pub const JS_DRIVER: &str = "/usr/lib/cellbox/cellbox_kernel.js";
/// Where the bash kernel driver lives in the guest (Python runs it).
pub const BASH_DRIVER: &str = "/usr/lib/cellbox/cellbox_kernel_bash.py";
/// Where the bridge to Jupyter kernels (R's) lives in the guest (Python runs it).
pub const JUPYTER_DRIVER: &str = "/usr/lib/cellbox/cellbox_kernel_jupyter.py";
/// Where the Java kernel driver lives in the guest (run from source).
pub const JAVA_DRIVER: &str = "/usr/lib/cellbox/CellboxKernel.java";
/// The Node.js that runs the JavaScript driver.
pub const NODE: &str = "/usr/bin/node";
/// The Java that runs the Java driver, with Debian's Gson for JSON; the
/// driver wraps its protocol fds (`java.io`) and sets per-run env vars
/// inside `java.util`'s map of them.
const JAVA: [&str; 6] = [
    "/usr/bin/java",
    "-XX:+UseSerialGC",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-cp",
    "/usr/share/java/gson.jar",
];
/// How long an interrupted cell may take to stop before the kernel is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// How long an interrupted cell that has stopped (the kernel said it is
/// `reporting`) may take to format its traceback: seconds on a slow CPU.
/// Both graces together stay within the host's wait past a timeout.
pub const REPORT_GRACE: Duration = Duration::from_secs(10);
/// What every kernel's environment adds to guest-init's.
const KERNEL_ENV: [(&str, &str); 3] = [
    ("MPLBACKEND", "Agg"),
    // Built into the root file system, so sessions skip the font scan.
    ("MPLCONFIGDIR", "/var/cache/cellbox/matplotlib"),
    ("PYTHONUNBUFFERED", "1"),
];
/// How long a new kernel may take to import IPython and say it is ready
/// (a cell's timeout starts after that).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the kernel process said, in order.
#[derive(Debug)]
enum Said {
    /// One JSON event line from fd 4.
    Event(serde_json::Value),
    /// Raw bytes its fd 1 or 2 received.
    Raw(Stream, String),
    /// fd 4 closed: the kernel exited or died.
    Gone,
}

/// A running kernel.
#[derive(Debug)]
pub struct Kernel {
    process: Process,
    requests: File,
    said: Receiver<Said>,
}

/// The kernel's process: started by guest-init, or forked by the warm
/// template (so not guest-init's child: watched through a pidfd once it
/// says its pid).
#[derive(Debug)]
enum Process {
    Child(Child),
    Forked { pid: i32, pidfd: Option<OwnedFd> },
}

/// How a cell ended, seen from the kernel.
#[derive(Debug)]
pub enum CellEnd {
    Done {
        execution_count: Option<u32>,
    },
    /// Interrupted after the timeout; the kernel survived with its state.
    TimedOut,
    /// The kernel died (or was killed after not answering an interrupt).
    Died(String),
}

impl Kernel {
    /// Starts a kernel for `language` in `cwd` (Python's with the
    /// interpreter `python`, forked from the warm template `zygote` when
    /// there is one) and waits until it is ready.
    pub fn start(
        language: Language,
        python: &str,
        cwd: &str,
        zygote: Option<&Zygote>,
    ) -> Result<Kernel, String> {
        if let (Language::Python, Some(zygote)) = (language, zygote) {
            match Kernel::fork(zygote, cwd) {
                Ok(kernel) => return Ok(kernel),
                Err(e) => eprintln!("guest-init: starting the kernel cold: {e}"),
            }
        }
        let (request_read, request_write) = pipe()?;
        let (event_read, event_write) = pipe()?;
        let (request_fd, event_fd) = (request_read.as_raw_fd(), event_write.as_raw_fd());
        let (program, args) = match language {
            Language::Python => (python, vec![DRIVER]),
            Language::Bash => (python, vec![BASH_DRIVER]),
            Language::Javascript | Language::Typescript => (NODE, vec![JS_DRIVER, language.name()]),
            Language::R => (python, vec![JUPYTER_DRIVER, "ir"]),
            Language::Java => (JAVA[0], [&JAVA[1..], &[JAVA_DRIVER]].concat()),
        };
        let mut command = Command::new(program);
        command
            .args(&args)
            .current_dir(cwd)
            .envs(KERNEL_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // First (closures run in order): the ones below move descriptors onto 3 and 4.
        crate::confine::apply(&mut command, crate::confine::User::default_user());
        // SAFETY: between fork and exec the closure only calls setsid, fcntl and
        // dup2, which are async-signal-safe, on descriptors that stay open until after spawn.
        unsafe {
            command.pre_exec(move || {
                // Its own process group, so that killing it also ends what it started.
                libc::setsid();
                // Move both ends above 4 first: dup2 onto an fd the other end
                // holds would clobber it, and dup2(fd, fd) keeps close-on-exec.
                let request = libc::fcntl(request_fd, libc::F_DUPFD_CLOEXEC, 10);
                let event = libc::fcntl(event_fd, libc::F_DUPFD_CLOEXEC, 10);
                if request < 0
                    || event < 0
                    || libc::dup2(request, 3) < 0
                    || libc::dup2(event, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {program} {}: {e}", args.join(" ")))?;
        drop((request_read, event_write));
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        Kernel::watch(
            Process::Child(child),
            request_write,
            event_read,
            stdout,
            stderr,
        )
    }

    /// A Python kernel forked from the warm template, as the default user.
    fn fork(zygote: &Zygote, cwd: &str) -> Result<Kernel, String> {
        let (request_read, request_write) = pipe()?;
        let (event_read, event_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let user = crate::confine::User::default_user();
        let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        for (key, value) in KERNEL_ENV {
            env.insert(key.into(), value.into());
        }
        for (key, value) in [
            ("HOME", &user.home),
            ("USER", &user.name),
            ("LOGNAME", &user.name),
        ] {
            env.insert(key.into(), value.clone());
        }
        zygote.fork_kernel(&KernelRequest {
            cwd,
            env: env.into_iter().collect(),
            uid: user.uid,
            gid: user.gid,
            fds: [
                request_read.as_fd(),
                event_write.as_fd(),
                stdout_write.as_fd(),
                stderr_write.as_fd(),
            ],
        })?;
        let forked = Process::Forked {
            pid: 0,
            pidfd: None,
        };
        let (stdout, stderr) = (File::from(stdout_read), File::from(stderr_read));
        Kernel::watch(
            forked,
            request_write,
            event_read,
            Some(stdout),
            Some(stderr),
        )
    }

    /// Forwards the kernel's output and events, and waits until it is ready.
    fn watch(
        process: Process,
        requests: OwnedFd,
        events: OwnedFd,
        stdout: Option<impl Read + Send + 'static>,
        stderr: Option<impl Read + Send + 'static>,
    ) -> Result<Kernel, String> {
        let (tx, said) = mpsc::sync_channel(output::QUEUE);
        let mut kernel = Kernel {
            requests: File::from(requests),
            said,
            process,
        };
        let forwarded = forward_raw(stdout, Stream::Stdout, tx.clone())
            .and_then(|()| forward_raw(stderr, Stream::Stderr, tx.clone()))
            .and_then(|()| forward_events(File::from(events), tx));
        if let Err(e) = forwarded {
            return Err(format!(
                "guest-init cannot start a thread for the kernel: {e}"
            ));
        }
        kernel.wait_ready()?;
        Ok(kernel)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut log = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(Said::Event(event)) if event["type"] == "ready" => {
                    return self.ready(event["pid"].as_i64());
                }
                Ok(Said::Raw(_, text)) => log.push_str(&text),
                Ok(Said::Event(_)) => {}
                Ok(Said::Gone) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("the kernel exited while starting:\n{log}"));
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(format!(
                        "the kernel did not start within {START_TIMEOUT:?}:\n{log}"
                    ));
                }
            }
        }
    }

    /// A forked kernel's pid comes with its `ready`: watched from now on.
    fn ready(&mut self, said_pid: Option<i64>) -> Result<(), String> {
        let Process::Forked { pid, pidfd } = &mut self.process else {
            return Ok(());
        };
        let said = said_pid
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 1);
        let Some(said) = said else {
            return Err("the warm kernel did not say its pid".into());
        };
        // SAFETY: pidfd_open with a pid and no flags returns a new descriptor we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, said, 0) };
        if fd < 0 {
            return Err(format!(
                "the warm kernel's pid {said}: {}",
                std::io::Error::last_os_error()
            ));
        }
        *pid = said;
        // SAFETY: the descriptor was just made and is owned by nobody else.
        *pidfd = Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Ok(())
    }

    /// The kernel's process id (for interrupts from other threads).
    pub fn pid(&self) -> i32 {
        match &self.process {
            Process::Child(child) => child.id() as i32,
            Process::Forked { pid, .. } => *pid,
        }
    }

    /// Runs one cell, passing each reply to `send`, until it ends.
    pub fn execute(
        &mut self,
        code: &str,
        env: &std::collections::BTreeMap<String, String>,
        timeout: Option<Duration>,
        send: &mut dyn FnMut(ReplyBody),
    ) -> CellEnd {
        let request = serde_json::json!({ "code": code, "env": env }).to_string();
        if let Err(e) = writeln!(self.requests, "{request}") {
            return CellEnd::Died(format!("the kernel stopped reading: {e}"));
        }
        let mut deadline = timeout.map(|t| Instant::now() + t);
        let mut interrupted = false;
        let mut reporting = false;
        let mut budget = Budget::new();
        // Output and rich results count against the budget; errors and the end always go.
        let mut send = |reply: ReplyBody| match reply {
            ReplyBody::Output { stream, text } => {
                if let Some(text) = budget.text(text) {
                    send(ReplyBody::Output { stream, text });
                }
            }
            ReplyBody::Result { result } => match budget.whole(result.to_string().len()) {
                Some(true) => send(ReplyBody::Result { result }),
                Some(false) => send(ReplyBody::Output {
                    stream: Stream::Stderr,
                    text: budget.marker(),
                }),
                None => {}
            },
            other => send(other),
        };
        loop {
            // Checked before reading: a cell that prints without pause keeps
            // the channel from ever being empty long enough to time out.
            let said = match deadline {
                Some(at) if Instant::now() >= at => Err(RecvTimeoutError::Timeout),
                Some(at) => self
                    .said
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                None => self.said.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match said {
                Ok(Said::Raw(stream, text)) => send(ReplyBody::Output { stream, text }),
                Ok(Said::Event(event)) => match reply_for(event) {
                    EventReply::End(_) if interrupted => return CellEnd::TimedOut,
                    EventReply::End(execution_count) => return CellEnd::Done { execution_count },
                    // The KeyboardInterrupt our own timeout caused is not the user's error.
                    EventReply::Send(ReplyBody::Error { .. }) if interrupted => {}
                    EventReply::Send(reply) => send(reply),
                    // Once: a cell's own code could say `reporting` too.
                    EventReply::Reporting if interrupted && !reporting => {
                        reporting = true;
                        deadline = Some(Instant::now() + REPORT_GRACE);
                        send(ReplyBody::Stopping);
                    }
                    EventReply::Reporting | EventReply::Ignore => {}
                },
                Ok(Said::Gone) | Err(RecvTimeoutError::Disconnected) => {
                    return CellEnd::Died(self.exit_reason());
                }
                Err(RecvTimeoutError::Timeout) if !interrupted => {
                    interrupted = true;
                    self.interrupt();
                    deadline = Some(Instant::now() + INTERRUPT_GRACE);
                    send(ReplyBody::Stopping);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return CellEnd::Died(
                        "the cell ignored the interrupt after its timeout; the kernel was restarted"
                            .into(),
                    );
                }
            }
        }
    }

    /// Sends SIGINT (KeyboardInterrupt in the running cell).
    pub fn interrupt(&self) {
        interrupt_pid(self.pid());
    }

    fn exit_reason(&mut self) -> String {
        // The events pipe closes as the process exits; give it a moment to be reaped.
        for _ in 0..50 {
            match &mut self.process {
                Process::Child(child) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return format!("the kernel died ({status})");
                    }
                }
                Process::Forked { pidfd, .. } => {
                    if pidfd.as_ref().is_none_or(exited) {
                        return "the kernel died".into();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        "the kernel stopped answering".into()
    }

    /// Kills the kernel and everything in its process group.
    pub fn kill(&mut self) {
        match &mut self.process {
            Process::Child(child) => {
                // SAFETY: kill(2) on the process group the kernel leads (see setsid above).
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                wait_for_group(child.id() as i32);
            }
            Process::Forked {
                pid,
                pidfd: Some(pidfd),
            } => {
                let killed = !exited(pidfd);
                if killed {
                    // SAFETY: kill(2) on the group the live kernel leads (it
                    // called setsid), then pidfd_send_signal on our pidfd.
                    unsafe {
                        libc::kill(-*pid, libc::SIGKILL);
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            pidfd.as_raw_fd(),
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        );
                    }
                }
                for _ in 0..100 {
                    if exited(pidfd) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if killed {
                    wait_for_group(*pid);
                }
            }
            // Not ready yet: it dies with its pipes (it exits on a closed fd 4).
            Process::Forked { pidfd: None, .. } => {}
        }
    }
}

/// Waits (a second at most) until the killed group `pgid` is gone, its
/// members reaped too: until then they count against the sandbox's process
/// limit, and the next cell's first command could find no room (a fork
/// bomb's hundreds of processes take a moment to reap).
fn wait_for_group(pgid: i32) {
    for _ in 0..200 {
        // SAFETY: kill(2) with signal 0 sends nothing; it only says whether
        // the group still has a member (a zombie included).
        if unsafe { libc::kill(-pgid, 0) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGINT to a kernel.
pub fn interrupt_pid(pid: i32) {
    // SAFETY: kill(2) with a pid we started and SIGINT has no memory effects.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
}

enum EventReply {
    Send(ReplyBody),
    /// The cell stopped with an exception; its report follows.
    Reporting,
    End(Option<u32>),
    Ignore,
}

/// Translates one kernel event into a reply.
fn reply_for(mut event: serde_json::Value) -> EventReply {
    let text =
        |event: &serde_json::Value, key: &str| event[key].as_str().unwrap_or_default().to_string();
    match event["type"].as_str().unwrap_or_default() {
        "stdout" => EventReply::Send(ReplyBody::Output {
            stream: Stream::Stdout,
            text: text(&event, "text"),
        }),
        "stderr" => EventReply::Send(ReplyBody::Output {
            stream: Stream::Stderr,
            text: text(&event, "text"),
        }),
        "result" => {
            if let Some(object) = event.as_object_mut() {
                object.remove("type");
            }
            EventReply::Send(ReplyBody::Result { result: event })
        }
        "error" => EventReply::Send(ReplyBody::Error {
            name: text(&event, "name"),
            value: text(&event, "value"),
            traceback: text(&event, "traceback"),
        }),
        "reporting" => EventReply::Reporting,
        "end" => EventReply::End(
            event["execution_count"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
        ),
        _ => EventReply::Ignore,
    }
}

/// The failure reply for a cell that did not end normally.
pub fn failure_for(end: &CellEnd, timeout: Option<Duration>) -> Option<ReplyBody> {
    match end {
        CellEnd::Done { .. } => None,
        CellEnd::TimedOut => Some(ReplyBody::failed(
            Failure::Timeout,
            format!(
                "the cell did not finish within {:?}; it was interrupted and the kernel kept its state",
                timeout.unwrap_or_default()
            ),
        )),
        CellEnd::Died(reason) => Some(ReplyBody::failed(Failure::KernelDied, reason.clone())),
    }
}

/// Whether the process behind `pidfd` has exited (it reads as readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut poll = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    !matches!(
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO),
        Ok(0)
    )
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn forward_raw(
    stream: Option<impl Read + Send + 'static>,
    which: Stream,
    tx: SyncSender<Said>,
) -> std::io::Result<()> {
    let Some(stream) = stream else { return Ok(()) };
    output::forward(stream, tx, move |bytes| {
        Said::Raw(which, String::from_utf8_lossy(bytes).into_owned())
    })
}

/// Reads the kernel's event lines (each at most a frame long: a longer one,
/// which only user code could write, is skipped and reported).
fn forward_events(events: File, tx: SyncSender<Said>) -> std::io::Result<()> {
    std::thread::Builder::new().spawn(move || {
        let mut lines = BufReader::new(events);
        let mut line = Vec::new();
        loop {
            line.clear();
            let limit = MAX_FRAME_LEN as u64 + 1;
            match (&mut lines).take(limit).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let complete = line.ends_with(b"\n");
                    if !complete && line.len() as u64 == limit && !skip_line(&mut lines) {
                        break;
                    }
                    let said = match serde_json::from_slice(&line) {
                        Ok(event) if complete => Said::Event(event),
                        _ => Said::Raw(
                            Stream::Stderr,
                            "[cellbox: the kernel sent a malformed event]\n".into(),
                        ),
                    };
                    if tx.send(said).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Said::Gone);
    })?;
    Ok(())
}

/// Reads past the rest of an over-long line; false if the pipe ended first.
fn skip_line(lines: &mut impl BufRead) -> bool {
    let mut rest = Vec::new();
    loop {
        rest.clear();
        match lines
            .take(output::CHUNK as u64)
            .read_until(b'\n', &mut rest)
        {
            Ok(0) | Err(_) => return false,
            Ok(_) if rest.ends_with(b"\n") => return true,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_replies() {
        let reply =
            reply_for(serde_json::json!({"type": "result", "text": "2", "is_main_result": true}));
        let EventReply::Send(ReplyBody::Result { result }) = reply else {
            panic!("expected a result");
        };
        assert_eq!(
            result,
            serde_json::json!({"text": "2", "is_main_result": true})
        );
        assert!(matches!(
            reply_for(serde_json::json!({"type": "end", "execution_count": 3})),
            EventReply::End(Some(3))
        ));
        assert!(matches!(
            reply_for(serde_json::json!({"type": "what"})),
            EventReply::Ignore
        ));
        assert!(matches!(
            reply_for(serde_json::json!(42)),
            EventReply::Ignore
        ));
    }
}
