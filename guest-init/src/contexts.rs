//! Contexts: named kernels, each with its own language, state and working
//! folder. Cells in one context run in order; different contexts run side by
//! side. Each language's default context exists from the start (its kernel
//! starts with its first cell).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kernel::{self, CellEnd, Kernel};
use crate::lock;
use crate::protocol::{ContextInfo, Failure, Language, ReplyBody};
use crate::zygote::Zygote;

/// All contexts of the guest.
#[derive(Debug)]
pub struct Contexts {
    python: String,
    /// The warm template Python kernels are forked from, if the host gave one.
    zygote: Option<Zygote>,
    default_cwd: String,
    next_id: AtomicU64,
    table: Mutex<BTreeMap<String, Arc<Context>>>,
}

#[derive(Debug)]
struct Context {
    cwd: String,
    language: Language,
    /// The kernel, started on the first cell; `None` after it died.
    kernel: Mutex<Option<Kernel>>,
    /// The running kernel's pid, for interrupts while `kernel` is locked.
    pid: AtomicI32,
}

impl Contexts {
    pub fn new(python: &str, zygote: Option<Zygote>, default_cwd: &str) -> Contexts {
        let contexts = Contexts {
            python: python.into(),
            zygote,
            default_cwd: default_cwd.into(),
            next_id: AtomicU64::new(1),
            table: Mutex::new(BTreeMap::new()),
        };
        for language in Language::ALL {
            contexts.insert(
                language.default_context().into(),
                default_cwd.into(),
                language,
            );
        }
        contexts
    }

    fn insert(&self, id: String, cwd: String, language: Language) -> ContextInfo {
        let info = ContextInfo {
            id: id.clone(),
            cwd: cwd.clone(),
            language,
        };
        let context = Context {
            cwd,
            language,
            kernel: Mutex::new(None),
            pid: AtomicI32::new(0),
        };
        lock(&self.table).insert(id, Arc::new(context));
        info
    }

    fn get(&self, id: &str) -> Result<Arc<Context>, ReplyBody> {
        lock(&self.table)
            .get(id)
            .cloned()
            .ok_or_else(|| ReplyBody::failed(Failure::NotFound, format!("no context `{id}`")))
    }

    pub fn create(&self, cwd: Option<String>, language: Language) -> ReplyBody {
        let cwd = cwd.unwrap_or_else(|| self.default_cwd.clone());
        if !std::path::Path::new(&cwd).is_dir() {
            return ReplyBody::failed(Failure::NotFound, format!("no folder {cwd}"));
        }
        let id = format!("ctx-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        ReplyBody::Context(self.insert(id, cwd, language))
    }

    pub fn list(&self) -> ReplyBody {
        let contexts = lock(&self.table)
            .iter()
            .map(|(id, c)| ContextInfo {
                id: id.clone(),
                cwd: c.cwd.clone(),
                language: c.language,
            })
            .collect();
        ReplyBody::Contexts { contexts }
    }

    pub fn restart(&self, id: &str) -> ReplyBody {
        match self.get(id) {
            Ok(context) => {
                context.stop();
                ReplyBody::Done
            }
            Err(failed) => failed,
        }
    }

    pub fn remove(&self, id: &str) -> ReplyBody {
        if Language::is_default_context(id) {
            return ReplyBody::failed(
                Failure::BadRequest,
                format!("the default context `{id}` cannot be removed"),
            );
        }
        match lock(&self.table).remove(id) {
            Some(context) => {
                context.stop();
                ReplyBody::Done
            }
            None => ReplyBody::failed(Failure::NotFound, format!("no context `{id}`")),
        }
    }

    pub fn interrupt(&self, id: &str) -> ReplyBody {
        match self.get(id) {
            Ok(context) => {
                let pid = context.pid.load(Ordering::Relaxed);
                if pid > 0 {
                    kernel::interrupt_pid(pid);
                }
                ReplyBody::Done
            }
            Err(failed) => failed,
        }
    }

    /// Runs a cell, sending its replies, the final one included.
    pub fn execute(
        &self,
        id: &str,
        code: &str,
        env: &BTreeMap<String, String>,
        timeout: Option<Duration>,
        send: &mut dyn FnMut(ReplyBody),
    ) {
        let context = match self.get(id) {
            Ok(context) => context,
            Err(failed) => return send(failed),
        };
        let mut slot = lock(&context.kernel);
        if let Err(reason) = self.ensure_kernel(&context, &mut slot) {
            return send(ReplyBody::failed(Failure::KernelDied, reason));
        }
        let Some(kernel) = slot.as_mut() else { return };
        let end = kernel.execute(code, env, timeout, send);
        if let CellEnd::Died(_) = end {
            context.pid.store(0, Ordering::Relaxed);
            *slot = None;
        }
        match (kernel::failure_for(&end, timeout), end) {
            (Some(failed), _) => send(failed),
            (None, CellEnd::Done { execution_count }) => {
                send(ReplyBody::ExecuteDone { execution_count })
            }
            (None, _) => {}
        }
    }

    /// Starts context `id`'s kernel now rather than with its first cell.
    pub fn start_kernel(&self, id: &str) -> Result<(), String> {
        let context = self.get(id).map_err(|_| format!("no context `{id}`"))?;
        let mut slot = lock(&context.kernel);
        self.ensure_kernel(&context, &mut slot)
    }

    fn ensure_kernel(&self, context: &Context, slot: &mut Option<Kernel>) -> Result<(), String> {
        if slot.is_none() {
            let kernel = Kernel::start(
                context.language,
                &self.python,
                &context.cwd,
                self.zygote.as_ref(),
            )?;
            context.pid.store(kernel.pid(), Ordering::Relaxed);
            *slot = Some(kernel);
        }
        Ok(())
    }

    /// Stops every kernel.
    pub fn stop_all(&self) {
        for context in lock(&self.table).values() {
            context.stop();
        }
    }
}

impl Context {
    fn stop(&self) {
        let pid = self.pid.swap(0, Ordering::Relaxed);
        if pid > 0 {
            // Unblocks a cell that holds the kernel lock; its reply says the kernel died.
            // SAFETY: kill(2) on the process group of a kernel this context started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        *lock(&self.kernel) = None;
    }
}
