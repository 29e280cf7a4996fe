//! The host side of the guest protocol: one connection to `guest-init`,
//! requests multiplexed by id, replies routed back to their callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellbox_guest_init::frame::{self, MAX_FRAME_LEN};
use cellbox_guest_init::protocol::{
    BootClock, DEFAULT_CONTEXT, Failure, Op, Reply, ReplyBody, Request, Stream, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::execution::{CellResult, Execution};
use crate::executor::{EventCallback, RunOptions};

type Pending = Arc<Mutex<HashMap<u64, ReplySender>>>;

/// Replies waiting for their caller, per request. A caller that reads slowly
/// holds up the connection, and so the guest, whose output then waits in
/// its pipes: push-back from the reader of the output to the printer.
const REPLY_QUEUE: usize = 16;

// A tunnel's data never fills its queue: the guest waits for acks first.
const _: () = assert!((cellbox_guest_init::protocol::PORT_WINDOW as usize) < REPLY_QUEUE);

/// Where one request's replies go.
#[derive(Clone)]
enum ReplySender {
    Bounded(mpsc::Sender<ReplyBody>),
    /// A background command's: its handle may never be read, so it must not
    /// hold up the connection; guest-init's output budget bounds it.
    Unbounded(mpsc::UnboundedSender<ReplyBody>),
}

/// The replies to one request, in order; `None` once they ended or the guest
/// went away.
#[derive(Debug)]
pub enum Replies {
    Bounded(mpsc::Receiver<ReplyBody>),
    Unbounded(mpsc::UnboundedReceiver<ReplyBody>),
}

impl Replies {
    /// The next reply.
    pub async fn recv(&mut self) -> Option<ReplyBody> {
        match self {
            Replies::Bounded(rx) => rx.recv().await,
            Replies::Unbounded(rx) => rx.recv().await,
        }
    }
}

/// How much longer than a cell's or command's own timeout the host waits
/// for the guest.
pub(crate) const GUEST_GRACE: Duration = Duration::from_secs(15);

// guest-init reports a timed-out cell within its two graces: the host waits longer.
const _: () = {
    use cellbox_guest_init::kernel::{INTERRUPT_GRACE, REPORT_GRACE};
    assert!(INTERRUPT_GRACE.as_secs() + REPORT_GRACE.as_secs() < GUEST_GRACE.as_secs());
};

/// A connection to `guest-init`. Cloning it is cheap: clones share the
/// connection, which closes when the last one is dropped.
#[derive(Clone)]
pub struct GuestClient {
    inner: Arc<Inner>,
    boot: Option<BootClock>,
}

struct Inner {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GuestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestClient").finish_non_exhaustive()
    }
}

pub(crate) fn died(reason: impl Into<String>) -> Error {
    Error::SandboxDied {
        reason: reason.into(),
    }
}

impl GuestClient {
    /// Connects over `stream` and checks that both sides speak the same protocol.
    pub async fn connect<S>(stream: S, hello_timeout: Duration) -> Result<GuestClient>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(route_replies(read, pending.clone()));
        let mut client = GuestClient {
            boot: None,
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(Box::new(write)),
                pending,
                next_id: AtomicU64::new(1),
                reader,
            }),
        };
        let hello = Op::Hello {
            version: VERSION,
            entropy: Some(fresh_entropy()?),
        };
        let hello = tokio::time::timeout(hello_timeout, client.call(hello))
            .await
            .map_err(|_| {
                died(format!(
                    "guest-init did not answer within {hello_timeout:?}"
                ))
            })??;
        match hello {
            ReplyBody::Hello { boot, .. } => {
                client.boot = boot;
                Ok(client)
            }
            other => Err(unexpected(other)),
        }
    }

    /// A microVM guest's boot milestones, as its `Hello` reported them.
    pub fn boot_clock(&self) -> Option<BootClock> {
        self.boot
    }

    /// Sends a request; its replies arrive on the returned channel, which
    /// closes if the guest goes away. A background command's replies are not
    /// held up when nobody reads them (see [`ReplySender::Unbounded`]).
    pub async fn request(&self, op: Op) -> Result<Replies> {
        let inner = &*self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = if matches!(op, Op::StartCommand { .. }) {
            let (tx, rx) = mpsc::unbounded_channel();
            (ReplySender::Unbounded(tx), Replies::Unbounded(rx))
        } else {
            let (tx, rx) = mpsc::channel(REPLY_QUEUE);
            (ReplySender::Bounded(tx), Replies::Bounded(rx))
        };
        inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let bytes = match frame::encode(&Request { id, op }) {
            Ok(bytes) => bytes,
            Err(e) => {
                inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(Error::InvalidArgument(format!("request too large: {e}")));
            }
        };
        let mut writer = inner.writer.lock().await;
        if let Err(e) = async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        }
        .await
        {
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(died(format!("the guest connection broke: {e}")));
        }
        Ok(rx)
    }

    /// Sends a request that has a single reply and returns it.
    pub async fn call(&self, op: Op) -> Result<ReplyBody> {
        let mut replies = self.request(op).await?;
        replies
            .recv()
            .await
            .ok_or_else(|| died("the guest closed the connection"))
    }

    /// Runs a cell in `context`, streaming its events.
    pub async fn execute(
        &self,
        context: &str,
        code: &str,
        options: &RunOptions,
        default_timeout: Duration,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        let timeout = options.timeout.unwrap_or(default_timeout);
        let mut replies = self
            .request(Op::Execute {
                context: context.to_string(),
                code: code.to_string(),
                env: options.env.clone(),
                timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
            })
            .await?;
        let mut execution = Execution::default();
        // The guest may first start a kernel (its cell's timeout starts after
        // that), then ends the cell at its timeout; past that it has GUEST_GRACE
        // from its last reply (it says `Stopping` while it stops the cell, and
        // a slow link may still be carrying output).
        let kernel_start = cellbox_guest_init::kernel::START_TIMEOUT;
        let give_up = tokio::time::Instant::now() + kernel_start + timeout + GUEST_GRACE;
        let deadline = tokio::time::sleep_until(give_up);
        tokio::pin!(deadline);
        let mut interrupt_sent = false;
        loop {
            let reply = tokio::select! {
                reply = replies.recv() => reply.ok_or_else(|| died("the guest closed the connection during the cell"))?,
                () = &mut deadline => return Err(died(format!("the guest did not answer in time (the cell's timeout: {timeout:?}; then {GUEST_GRACE:?} of silence)"))),
                // The kernel gets SIGINT and ends the cell with KeyboardInterrupt; keep reading.
                () = crate::executor::interrupted(options.interrupt.as_ref()), if !interrupt_sent => {
                    interrupt_sent = true;
                    let _ = self.request(Op::Interrupt { context: context.to_string() }).await;
                    continue;
                }
            };
            let heard = tokio::time::Instant::now() + GUEST_GRACE;
            deadline.as_mut().reset(give_up.max(heard));
            let event = match reply {
                ReplyBody::Stopping => continue,
                ReplyBody::Output {
                    stream: Stream::Stdout,
                    text,
                } => Event::Stdout(text),
                ReplyBody::Output {
                    stream: Stream::Stderr,
                    text,
                } => Event::Stderr(text),
                ReplyBody::Result { result } => {
                    match serde_json::from_value::<CellResult>(result) {
                        Ok(result) => Event::Result(Box::new(result)),
                        Err(e) => {
                            Event::Stderr(format!("[cellbox: ignored a malformed result: {e}]\n"))
                        }
                    }
                }
                ReplyBody::Error {
                    name,
                    value,
                    traceback,
                } => Event::Error(crate::ExecutionError {
                    name,
                    value,
                    traceback,
                }),
                ReplyBody::ExecuteDone { execution_count } => Event::End { execution_count },
                ReplyBody::Failed {
                    failure: Failure::Timeout,
                    message,
                } => {
                    return Err(Error::Timeout {
                        after: timeout,
                        restarted: message.contains("restarted"),
                    });
                }
                ReplyBody::Failed {
                    failure: Failure::KernelDied,
                    message,
                } => {
                    return Err(died(format!(
                        "the kernel died: {message}; the next cell starts a fresh kernel"
                    )));
                }
                other => return Err(failure(other)),
            };
            execution.apply(&event);
            on_event(&event);
            if matches!(event, Event::End { .. }) {
                return Ok(execution);
            }
        }
    }

    /// Restarts the default context's kernel.
    pub async fn restart_default(&self) -> Result<()> {
        match self
            .call(Op::RestartContext {
                context: DEFAULT_CONTEXT.into(),
            })
            .await?
        {
            ReplyBody::Done => Ok(()),
            other => Err(failure(other)),
        }
    }

    /// Asks the guest to stop everything.
    pub async fn shutdown(&self) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(5), self.call(Op::Shutdown)).await {
            Ok(Ok(ReplyBody::Done)) | Ok(Err(Error::SandboxDied { .. })) | Err(_) => Ok(()),
            Ok(Ok(other)) => Err(failure(other)),
            Ok(Err(e)) => Err(e),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The error for a `Failed` reply (or any reply that should not have come).
pub fn failure(reply: ReplyBody) -> Error {
    match reply {
        ReplyBody::Failed {
            failure: Failure::NotFound,
            message,
        } => Error::NotFound(message),
        ReplyBody::Failed {
            failure: Failure::BadRequest,
            message,
        } => Error::InvalidArgument(message),
        ReplyBody::Failed {
            failure: Failure::Version,
            message,
        } => Error::Artifact {
            what: "the guest image".into(),
            reason: message,
        },
        ReplyBody::Failed {
            failure: Failure::Io,
            message,
        } => Error::io("in the guest", std::io::Error::other(message)),
        ReplyBody::Failed { message, .. } => died(message),
        other => unexpected(other),
    }
}

/// The error for a reply that should not have come.
pub(crate) fn unexpected(reply: ReplyBody) -> Error {
    died(format!("the guest sent an unexpected reply: {reply:?}"))
}

/// Reads frames and hands each reply to its request's channel. Garbage is
/// logged and skipped; a broken stream closes every pending channel.
async fn route_replies(mut read: impl AsyncRead + Unpin, pending: Pending) {
    let mut header = [0u8; 4];
    loop {
        if read.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME_LEN {
            tracing::warn!("guest sent a {len}-byte frame, over the limit; closing the connection");
            break;
        }
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        let reply: Reply = match serde_json::from_slice(&payload) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!("ignored a malformed message from the guest: {e}");
                continue;
            }
        };
        let sender = {
            let mut table = pending.lock().unwrap_or_else(|p| p.into_inner());
            if reply.body.is_final() {
                table.remove(&reply.id)
            } else {
                table.get(&reply.id).cloned()
            }
        };
        // A caller that is gone no longer wants its replies.
        match sender {
            Some(ReplySender::Bounded(tx)) => {
                let _ = tx.send(reply.body).await;
            }
            Some(ReplySender::Unbounded(tx)) => {
                let _ = tx.send(reply.body);
            }
            None => {}
        }
    }
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// 32 random bytes from the host's kernel, in hex, for a guest's `Hello`
/// (a microVM restored from a snapshot mixes them into its own pool).
fn fresh_entropy() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut file = std::fs::File::open("/dev/urandom")
        .map_err(|e| crate::error::Error::io("reading /dev/urandom", e))?;
    std::io::Read::read_exact(&mut file, &mut bytes)
        .map_err(|e| crate::error::Error::io("reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
