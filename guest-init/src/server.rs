//! The protocol server: reads requests from the host, answers each on its own
//! thread, so that file and command requests are served while a cell runs.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::commands::{self, Commands};
use crate::confine::{DEFAULT_USER, User};
use crate::contexts::Contexts;
use crate::files;
use crate::frame::{self, FrameError};
use crate::ports::Ports;
use crate::protocol::{BootClock, Failure, Op, Reply, ReplyBody, Request, VERSION};
use crate::reseed;
use crate::watch::Watches;

/// Why the conversation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host asked for a shutdown.
    Shutdown,
    /// The host went away or the stream broke.
    Disconnected,
}

/// Serves one host connection until it ends; the commands it started are
/// killed then. `boot` (a microVM guest's milestones so far) goes into `Hello`.
pub fn serve(stream: File, contexts: Arc<Contexts>, boot: Option<BootClock>) -> Ended {
    let connection = Arc::new(Connection::default());
    let ended = serve_with(stream, &contexts, &connection, boot);
    connection.commands.kill_all();
    connection.watches.stop_all();
    connection.ports.close_all();
    ended
}

/// What one host connection started: commands, folder watches, tunnels.
#[derive(Debug, Default)]
pub struct Connection {
    pub commands: Commands,
    pub watches: Watches,
    pub ports: Ports,
}

fn serve_with(
    stream: File,
    contexts: &Arc<Contexts>,
    connection: &Arc<Connection>,
    boot: Option<BootClock>,
) -> Ended {
    let writer = match stream.try_clone() {
        Ok(writer) => Arc::new(Mutex::new(writer)),
        Err(_) => return Ended::Disconnected,
    };
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let request: Request = match frame::read(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ended::Disconnected,
            Err(e) => {
                send(
                    &writer,
                    0,
                    ReplyBody::failed(Failure::BadRequest, e.to_string()),
                );
                if e.is_recoverable() {
                    continue;
                }
                return Ended::Disconnected;
            }
        };
        match request.op {
            Op::Shutdown => {
                contexts.stop_all();
                send(&writer, request.id, ReplyBody::Done);
                return Ended::Shutdown;
            }
            Op::Hello { version, entropy } => {
                if let (Some(_), Some(entropy)) = (boot, entropy) {
                    // Only a microVM's guest-init owns its kernel's pool.
                    let mixed = reseed::parse_hex(&entropy)
                        .ok_or_else(|| "the entropy is not hex".to_string())
                        .and_then(|bytes| reseed::mix(&bytes));
                    if let Err(e) = mixed {
                        send(&writer, request.id, ReplyBody::failed(Failure::Io, e));
                        continue;
                    }
                }
                send(&writer, request.id, hello(version, boot))
            }
            op => {
                let (replies, contexts, connection) =
                    (writer.clone(), contexts.clone(), connection.clone());
                let spawned = std::thread::Builder::new().spawn(move || {
                    handle(op, &contexts, &connection, &mut |body| {
                        send(&replies, request.id, body)
                    });
                });
                if let Err(e) = spawned {
                    let message = format!("guest-init cannot start a thread for this request: {e}");
                    send(&writer, request.id, ReplyBody::failed(Failure::Io, message));
                }
            }
        }
    }
}

fn send(writer: &Mutex<File>, id: u64, body: ReplyBody) {
    let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
    match frame::write(&mut *writer, &Reply { id, body }) {
        Ok(()) => {}
        // A reply too large for one frame (a huge repr): say so instead.
        Err(FrameError::TooLarge(len)) => {
            let body = ReplyBody::Output {
                stream: crate::protocol::Stream::Stderr,
                text: format!("[cellbox: dropped a {len}-byte message, over the frame limit]\n"),
            };
            let _ = frame::write(&mut *writer, &Reply { id, body });
        }
        Err(_) => {} // the host is gone; the reader notices
    }
}

/// The answer to a `Hello` from a host speaking protocol `version`.
pub fn hello(version: u32, boot: Option<BootClock>) -> ReplyBody {
    if version != VERSION {
        return ReplyBody::failed(
            Failure::Version,
            format!(
                "the host speaks protocol {version}, this guest speaks {VERSION}: rebuild the guest image"
            ),
        );
    }
    ReplyBody::Hello {
        version: VERSION,
        guest: format!("cellbox-guest-init {}", env!("CARGO_PKG_VERSION")),
        boot: boot.map(|boot| BootClock {
            hello_ms: BootClock::now_ms(),
            ..boot
        }),
    }
}

/// Answers one request through `send`; the last reply is final.
pub fn handle(
    op: Op,
    contexts: &Contexts,
    connection: &Connection,
    send: &mut dyn FnMut(ReplyBody),
) {
    let (commands, watches) = (&connection.commands, &connection.watches);
    let ms = |t: Option<u64>| t.map(Duration::from_millis);
    let (background, pty) = match &op {
        Op::StartCommand { pty, .. } => (true, *pty),
        _ => (false, None),
    };
    let reply = match op {
        Op::Hello { version, .. } => hello(version, None),
        Op::Execute {
            context,
            code,
            env,
            timeout_ms,
        } => {
            return contexts.execute(&context, &code, &env, ms(timeout_ms), send);
        }
        Op::Interrupt { context } => contexts.interrupt(&context),
        Op::CreateContext { cwd, language } => contexts.create(cwd, language),
        Op::ListContexts => contexts.list(),
        Op::StartKernel { context } => match contexts.start_kernel(&context) {
            Ok(()) => ReplyBody::Done,
            Err(reason) => ReplyBody::failed(Failure::KernelDied, reason),
        },
        Op::RestartContext { context } => contexts.restart(&context),
        Op::RemoveContext { context } => contexts.remove(&context),
        Op::ReadFile {
            path,
            offset,
            length,
        } => return files::read(&path, offset, length, send),
        Op::WriteFile { path, data, append } => files::write(&path, &data, append),
        Op::ListDir { path } => files::list(&path),
        Op::MakeDir { path } => files::make_dir(&path),
        Op::Remove { path } => files::remove(&path),
        Op::Rename { from, to } => files::rename(&from, &to),
        Op::SetMetadata { path, metadata } => files::set_metadata(&path, &metadata),
        Op::Stat { path } => {
            files::stat(&path).map_or_else(|failed| failed, |stat| ReplyBody::Stat(Box::new(stat)))
        }
        Op::RunCommand {
            cmd,
            cwd,
            env,
            timeout_ms,
            user,
        }
        | Op::StartCommand {
            cmd,
            cwd,
            env,
            timeout_ms,
            user,
            ..
        } => {
            let user = match User::lookup(user.as_deref().unwrap_or(DEFAULT_USER)) {
                Ok(user) => user,
                Err(e) => return send(ReplyBody::failed(Failure::BadRequest, e)),
            };
            let spec = commands::Spec {
                cmd: &cmd,
                cwd: cwd.as_deref(),
                env: &env,
                timeout: ms(timeout_ms),
                background,
                user: &user,
                pty,
            };
            return commands.run(spec, send);
        }
        Op::ResizePty { pid, size } => commands.resize(pid, size),
        Op::WatchDir { path, recursive } => {
            return watches.watch(&path, recursive, User::default_user(), send);
        }
        Op::Unwatch { watch } => watches.unwatch(watch),
        Op::SendStdin { pid, data, eof } => commands.send_stdin(pid, &data, eof),
        Op::KillCommand { pid } => commands.kill(pid),
        Op::ListCommands => commands.list(),
        Op::OpenPort { port } => return connection.ports.open(port, send),
        Op::PortSend { tunnel, data, eof } => connection.ports.send(tunnel, &data, eof),
        Op::PortAck { tunnel, chunks } => connection.ports.ack(tunnel, chunks),
        Op::ClosePort { tunnel } => connection.ports.close(tunnel),
        Op::Shutdown => ReplyBody::Done,
    };
    send(reply);
}
