//! `Sandbox` (the native one): a [`cellbox::Sandbox`] and the calls the
//! Python `Sandbox`, `Filesystem`, `Commands` and `Pty` make on it.

use std::collections::BTreeMap;
use std::time::Duration;

use cellbox::guest::commands::Stream;
use cellbox::{
    BackendPolicy, CommandOptions, ContextInfo, Event, Language, NetworkPolicy, RunCodeOptions,
    Sandbox, SandboxOptions, Snapshot,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::blocking::{runtime, wait_for};
use crate::stream::{EventStream, Item, feed};

/// Unread events a cell's or command's stream may hold: no limit here, as
/// the guest already cuts what one run may print (`output_limit`).
const RUN_BACKLOG: usize = usize::MAX;
/// Unread changes a folder watch may hold; later ones are dropped.
const WATCH_BACKLOG: usize = 65_536;

/// One sandbox, shared by the Python objects that use it.
#[derive(Debug)]
#[pyclass(frozen, module = "cellbox._native", name = "Sandbox")]
pub struct NativeSandbox {
    sandbox: Sandbox,
}

fn invalid(message: String) -> cellbox::Error {
    cellbox::Error::InvalidArgument(message)
}

fn language(name: Option<&str>) -> cellbox::Result<Option<Language>> {
    name.map(|name| {
        Language::parse(name).ok_or_else(|| {
            invalid(format!(
                "unknown language `{name}`: use python, javascript, typescript, bash, r or java"
            ))
        })
    })
    .transpose()
}

/// `seconds` as a duration; `None` and 0 mean no limit, as in E2B's SDK.
fn seconds(seconds: Option<f64>) -> cellbox::Result<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|_| invalid(format!("{s} is not a number of seconds"))),
    }
}

fn json<T: serde::Serialize>(value: &T) -> cellbox::Result<String> {
    serde_json::to_string(value).map_err(|e| invalid(format!("cannot encode the answer: {e}")))
}

/// The options of `Sandbox.create` (see `cellbox/sandbox.py`).
#[derive(Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct CreateOptions {
    backend: String,
    template: Option<String>,
    timeout: Option<f64>,
    envs: Option<BTreeMap<String, String>>,
    metadata: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    memory_mb: Option<u32>,
    disk_mb: Option<u32>,
    cpu_count: Option<u8>,
    allow_internet_access: bool,
    allow_out: Vec<String>,
    deny_out: Vec<String>,
}

impl CreateOptions {
    fn sandbox_options(self) -> cellbox::Result<SandboxOptions> {
        let backend = match self.backend.as_str() {
            "auto" => BackendPolicy::Auto,
            "wasm" => BackendPolicy::Wasm,
            "vm" => BackendPolicy::Vm,
            "namespace" => BackendPolicy::Namespace,
            other => {
                return Err(invalid(format!(
                    "unknown backend `{other}`: use auto, wasm, vm or namespace"
                )));
            }
        };
        let mut options = SandboxOptions {
            backend,
            template: self.template,
            env_vars: self.envs.unwrap_or_default(),
            metadata: self.metadata.unwrap_or_default(),
            cwd: self.cwd,
            inactivity_timeout: seconds(self.timeout)?,
            network: NetworkPolicy {
                allow_internet_access: self.allow_internet_access,
                allow_out: self.allow_out,
                deny_out: self.deny_out,
                ..NetworkPolicy::default()
            },
            ..SandboxOptions::default()
        };
        if let Some(mib) = self.memory_mb {
            options.memory_mib = mib;
        }
        if let Some(mib) = self.disk_mb {
            options.disk_mib = mib;
        }
        if let Some(cpus) = self.cpu_count {
            options.vcpus = cpus;
        }
        Ok(options)
    }
}

/// A command to start (see `cellbox/_commands.py`).
#[derive(Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct CommandSpec {
    cmd: String,
    envs: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    user: Option<String>,
    /// Seconds; `None` or 0 for no limit.
    timeout: Option<f64>,
    /// A terminal of (columns, rows).
    pty: Option<(u16, u16)>,
}

#[pymethods]
impl NativeSandbox {
    /// Starts a sandbox (building missing artefacts first, with progress on stderr).
    #[staticmethod]
    fn create(py: Python<'_>, options: CreateOptions) -> PyResult<NativeSandbox> {
        let options = options
            .sandbox_options()
            .map_err(crate::errors::to_python)?;
        let sandbox = wait_for(py, async move {
            let options = match crate::spares::for_options(&options) {
                Some(pool) => options.with_namespace_pool(pool),
                None => options,
            };
            Sandbox::create(options).await
        })?;
        Ok(NativeSandbox { sandbox })
    }

    /// Starts a sandbox from the snapshot in folder `dir`.
    #[staticmethod]
    fn from_snapshot(
        py: Python<'_>,
        dir: String,
        options: CreateOptions,
    ) -> PyResult<NativeSandbox> {
        let options = options
            .sandbox_options()
            .map_err(crate::errors::to_python)?;
        let sandbox = wait_for(py, async {
            let snapshot = Snapshot::open(&dir)?;
            Sandbox::from_snapshot(&snapshot, options).await
        })?;
        Ok(NativeSandbox { sandbox })
    }

    #[getter]
    fn id(&self) -> &str {
        self.sandbox.id()
    }

    /// The backend that ran the latest cell of the default context.
    fn backend(&self, py: Python<'_>) -> PyResult<String> {
        let backend = wait_for(py, async { Ok(self.sandbox.backend().await) })?;
        Ok(backend.to_string())
    }

    fn is_running(&self, py: Python<'_>) -> PyResult<bool> {
        wait_for(py, async { Ok(self.sandbox.is_running().await) })
    }

    /// Closes the sandbox after `timeout` seconds without use (0: never).
    fn set_timeout(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(Some(timeout)).map_err(crate::errors::to_python)?;
        wait_for(py, async {
            self.sandbox.set_timeout(timeout).await;
            Ok(())
        })
    }

    /// Starts `code`; its events come through the stream, then its outcome
    /// (`{"execution_count": N}`).
    #[pyo3(signature = (code, language=None, context=None, envs=None, timeout=None))]
    fn run_code(
        &self,
        code: String,
        language: Option<String>,
        context: Option<(String, String, String)>,
        envs: Option<BTreeMap<String, String>>,
        timeout: Option<f64>,
    ) -> PyResult<EventStream> {
        let options = (|| -> cellbox::Result<RunCodeOptions> {
            let context = match context {
                Some((id, context_language, cwd)) => Some(ContextInfo {
                    id,
                    cwd,
                    language: self::language(Some(&context_language))?.unwrap_or_default(),
                }),
                None => None,
            };
            Ok(RunCodeOptions {
                context,
                language: self::language(language.as_deref())?,
                env: envs.unwrap_or_default(),
                timeout: seconds(timeout)?,
                interrupt: Some(cellbox::Interrupt::new()),
            })
        })()
        .map_err(crate::errors::to_python)?;
        let interrupt = options.interrupt.clone();
        let (tx, events) = feed(RUN_BACKLOG);
        let sandbox = self.sandbox.clone();
        let done = runtime()?.spawn(async move {
            let mut forward = |event: &Event| {
                if let Some(item) = cell_item(event) {
                    let _ = tx.send(item);
                }
            };
            let execution = sandbox.run_code_with(&code, &options, &mut forward).await?;
            // The events carried everything else (large images included) already.
            json(&serde_json::json!({"execution_count": execution.execution_count}))
        });
        Ok(EventStream::new(events, done, interrupt, None))
    }

    #[pyo3(signature = (cwd=None, language=None))]
    fn create_context(
        &self,
        py: Python<'_>,
        cwd: Option<String>,
        language: Option<String>,
    ) -> PyResult<String> {
        wait_for(py, async {
            let language = self::language(language.as_deref())?.unwrap_or_default();
            json(
                &self
                    .sandbox
                    .create_context(cwd.as_deref(), language)
                    .await?,
            )
        })
    }

    fn list_contexts(&self, py: Python<'_>) -> PyResult<String> {
        wait_for(py, async { json(&self.sandbox.list_contexts().await?) })
    }

    fn restart_context(&self, py: Python<'_>, id: String) -> PyResult<()> {
        wait_for(py, async {
            let context = self.find_context(&id).await?;
            self.sandbox.restart_context(&context).await
        })
    }

    fn remove_context(&self, py: Python<'_>, id: String) -> PyResult<()> {
        wait_for(py, async {
            let context = self.find_context(&id).await?;
            self.sandbox.remove_context(&context).await
        })
    }

    fn read_file<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyBytes>> {
        let data = wait_for(py, self.sandbox.files().read(&path))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Writes the file, keeping `metadata` on it (`user.e2b.*` attributes).
    #[pyo3(signature = (path, data, metadata=None))]
    fn write_file(
        &self,
        py: Python<'_>,
        path: String,
        data: Vec<u8>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> PyResult<String> {
        wait_for(py, async {
            let files = self.sandbox.files();
            files.write(&path, &data).await?;
            if let Some(metadata) = metadata.filter(|m| !m.is_empty()) {
                files.set_metadata(&path, &metadata).await?;
            }
            json(&files.stat(&path).await?)
        })
    }

    /// Watches the folder `path`: each change is a stream item `("event",
    /// json)`; the stream's `interrupt()` ends the watch.
    fn watch_dir(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<EventStream> {
        let mut watch = wait_for(py, self.sandbox.files().watch_dir(&path, recursive))?;
        let stop = cellbox::Interrupt::new();
        let (tx, events) = feed(WATCH_BACKLOG);
        let stopped = stop.clone();
        let done = runtime()?.spawn(async move {
            let ended = loop {
                tokio::select! {
                    batch = watch.next() => match batch {
                        Some(Ok(batch)) => {
                            for event in batch {
                                let _ = tx.send(("event", json(&event)?));
                            }
                        }
                        Some(Err(e)) => return Err(e),
                        None => break true,
                    },
                    () = stopped.interrupted() => break false,
                }
            };
            if !ended {
                watch.stop().await?;
            }
            Ok("null".to_string())
        });
        Ok(EventStream::new(events, done, Some(stop), None))
    }

    fn list_files(&self, py: Python<'_>, path: String) -> PyResult<String> {
        wait_for(py, async { json(&self.sandbox.files().list(&path).await?) })
    }

    fn stat_file(&self, py: Python<'_>, path: String) -> PyResult<String> {
        wait_for(py, async { json(&self.sandbox.files().stat(&path).await?) })
    }

    fn file_exists(&self, py: Python<'_>, path: String) -> PyResult<bool> {
        wait_for(py, self.sandbox.files().exists(&path))
    }

    /// Makes the folder `path` (and its parents); false if it was there.
    fn make_dir(&self, py: Python<'_>, path: String) -> PyResult<bool> {
        wait_for(py, async {
            let files = self.sandbox.files();
            if files.exists(&path).await? {
                return Ok(false);
            }
            files.make_dir(&path).await?;
            Ok(true)
        })
    }

    fn remove_file(&self, py: Python<'_>, path: String) -> PyResult<()> {
        wait_for(py, self.sandbox.files().remove(&path))
    }

    fn rename_file(&self, py: Python<'_>, old: String, new: String) -> PyResult<String> {
        wait_for(py, async {
            let files = self.sandbox.files();
            files.rename(&old, &new).await?;
            json(&files.stat(&new).await?)
        })
    }

    /// Starts a command (`sh -c`); its output and result come through the
    /// stream, whose `interrupt()` kills it.
    fn start_command(&self, py: Python<'_>, command: CommandSpec) -> PyResult<EventStream> {
        let CommandSpec {
            cmd,
            envs,
            cwd,
            user,
            timeout,
            pty,
        } = command;
        let options = CommandOptions {
            cwd,
            user,
            env: envs.unwrap_or_default(),
            timeout: seconds(timeout).map_err(crate::errors::to_python)?,
            pty: None,
        };
        let options = match pty {
            Some((cols, rows)) => options.pty(cols, rows),
            None => options,
        };
        let handle = wait_for(py, self.sandbox.commands().start(&cmd, &options))?;
        let pid = handle.pid();
        let interrupt = cellbox::Interrupt::new();
        let (tx, events) = feed(RUN_BACKLOG);
        let (sandbox, stop) = (self.sandbox.clone(), interrupt.clone());
        let done = runtime()?.spawn(async move {
            let mut forward = |stream: Stream, text: &str| {
                let kind = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                let _ = tx.send((kind, text.to_string()));
            };
            let wait = handle.wait_with_output(&mut forward);
            tokio::pin!(wait);
            let result = tokio::select! {
                result = &mut wait => result,
                () = stop.interrupted() => {
                    let _ = sandbox.commands().kill(pid).await;
                    wait.await
                }
            }?;
            json(&serde_json::json!({
                "stdout": result.stdout,
                "stderr": result.stderr,
                "exit_code": result.exit_code,
            }))
        });
        Ok(EventStream::new(events, done, Some(interrupt), Some(pid)))
    }

    fn kill_command(&self, py: Python<'_>, pid: u32) -> PyResult<bool> {
        match wait_for(py, self.sandbox.commands().kill(pid)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(py, &e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send_stdin(&self, py: Python<'_>, pid: u32, data: Vec<u8>) -> PyResult<()> {
        wait_for(py, self.sandbox.commands().send_stdin(pid, &data))
    }

    fn close_stdin(&self, py: Python<'_>, pid: u32) -> PyResult<()> {
        wait_for(py, self.sandbox.commands().close_stdin(pid))
    }

    fn resize_pty(&self, py: Python<'_>, pid: u32, cols: u16, rows: u16) -> PyResult<()> {
        wait_for(py, self.sandbox.commands().resize(pid, cols, rows))
    }

    fn list_commands(&self, py: Python<'_>) -> PyResult<String> {
        wait_for(py, async {
            let commands = self.sandbox.commands().list().await?;
            let listed: Vec<_> = commands
                .iter()
                .map(|c| serde_json::json!({"pid": c.pid, "cmd": c.cmd}))
                .collect();
            json(&listed)
        })
    }

    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        wait_for(py, self.sandbox.pause())
    }

    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        wait_for(py, self.sandbox.resume())
    }

    fn is_paused(&self) -> bool {
        self.sandbox.is_paused()
    }

    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        wait_for(py, self.sandbox.close())
    }

    fn fork(&self, py: Python<'_>) -> PyResult<NativeSandbox> {
        let sandbox = wait_for(py, self.sandbox.fork())?;
        Ok(NativeSandbox { sandbox })
    }

    /// Keeps this sandbox's files and state in the new folder `dir`;
    /// returns whether the whole VM was kept.
    fn snapshot(&self, py: Python<'_>, dir: String) -> PyResult<bool> {
        let snapshot = wait_for(py, self.sandbox.snapshot(&dir))?;
        Ok(snapshot.whole())
    }

    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        wait_for(py, async {
            let m = self.sandbox.metrics().await?;
            let timestamp = m
                .timestamp
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            json(&serde_json::json!({
                "timestamp": timestamp,
                "cpu_count": m.cpu_count,
                "cpu_used_pct": m.cpu_used_pct,
                "mem_used": m.mem_used,
                "mem_total": m.mem_total,
                "disk_used": m.disk_used,
                "disk_total": m.disk_total,
            }))
        })
    }
}

impl NativeSandbox {
    async fn find_context(&self, id: &str) -> cellbox::Result<ContextInfo> {
        self.sandbox
            .list_contexts()
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| cellbox::Error::NotFound(format!("no context `{id}` in this sandbox")))
    }
}

fn is_not_found(py: Python<'_>, error: &PyErr) -> bool {
    error
        .value(py)
        .getattr("args")
        .and_then(|args| args.get_item(0))
        .and_then(|kind| kind.extract::<String>())
        .is_ok_and(|kind| kind == "not_found")
}

/// A cell's event as a stream item (the end of the cell is the stream's end).
fn cell_item(event: &Event) -> Option<Item> {
    match event {
        Event::Stdout(text) => Some(("stdout", text.clone())),
        Event::Stderr(text) => Some(("stderr", text.clone())),
        Event::Result(result) => {
            // A string's text without its quotes, as E2B's server gives it.
            let mut result = result.as_ref().clone();
            if let Some(text) = &mut result.text {
                *text = cellbox::execution::e2b_text(text).to_string();
            }
            json(&result).ok().map(|json| ("result", json))
        }
        Event::Error(error) => json(error).ok().map(|json| ("error", json)),
        Event::End { .. } => None,
    }
}
