//! Builds a template: the Dockerfile's steps run in a namespace sandbox over
//! the base template, with network access (the build's only), and what they
//! wrote (the sandbox's writable layer) becomes the template's layer,
//! cached by the content of everything it was made from.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dockerfile::{Dockerfile, Instruction};
use super::store::{SandboxDefaults, TemplateInfo, TemplateStore, check_name};
use crate::error::{Error, Result};
use crate::guest::{CommandOptions, GuestArtifacts, GuestClient, GuestExecutor};
use crate::namespace::{NamespaceConfig, NamespaceExecutor, NetworkPolicy};
use crate::progress::Progress;
use crate::{Executor, cache};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The template's name (`cellbox run --template NAME`, E2B's `templateID`).
    pub name: String,
    /// The `e2b.Dockerfile`.
    pub dockerfile: PathBuf,
    /// The folder `COPY` takes files from (default: the Dockerfile's).
    pub context: Option<PathBuf>,
    /// Values of the Dockerfile's `ARG`s.
    pub build_args: BTreeMap<String, String>,
    /// The artefact cache; `None` means [`crate::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Memory and disk of the build's sandbox, in MiB.
    pub memory_mib: u32,
    pub disk_mib: u32,
    /// What the template's sandboxes start with and get.
    pub defaults: SandboxDefaults,
    /// Each step's progress and output lines.
    pub progress: Progress,
}

impl BuildOptions {
    /// Builds `name` from `dockerfile` with the defaults.
    pub fn new(name: impl Into<String>, dockerfile: impl Into<PathBuf>) -> Self {
        BuildOptions {
            name: name.into(),
            dockerfile: dockerfile.into(),
            context: None,
            build_args: BTreeMap::new(),
            cache_dir: None,
            memory_mib: 4096,
            disk_mib: 16384,
            defaults: SandboxDefaults::default(),
            progress: Progress::default(),
        }
    }
}

/// Where the build keeps its own files inside the sandbox (a tmpfs, so
/// nothing of it lands in the layer).
const BUILD_DIR: &str = "/tmp/cellbox-build";

/// Builds (or finds in the cache) the template and records it under its
/// name. Needs root, as namespace sandboxes do.
pub async fn build(options: BuildOptions) -> Result<TemplateInfo> {
    let started = Instant::now();
    check_name(&options.name)?;
    let text = std::fs::read_to_string(&options.dockerfile).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read {}: {e} (make one with `cellbox template init`)",
            options.dockerfile.display()
        ))
    })?;
    let file = Dockerfile::parse(&text, &options.build_args)?;
    let context = match &options.context {
        Some(dir) => dir.clone(),
        None => options
            .dockerfile
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    let context = context.canonicalize().map_err(|e| {
        Error::InvalidArgument(format!("the build context {}: {e}", context.display()))
    })?;
    let cache_root = options
        .cache_dir
        .clone()
        .unwrap_or_else(crate::default_cache_dir);
    let store = TemplateStore::open(&cache_root);
    let base = file
        .base
        .as_deref()
        .map(|name| store.get(name))
        .transpose()?;

    // The key: the default root, the base's layers, the steps, the files copied.
    let progress = options.progress.clone();
    let artifacts = {
        let (cache_root, progress) = (cache_root.clone(), progress.clone());
        tokio::task::spawn_blocking(move || GuestArtifacts::ensure(&cache_root, &progress))
            .await
            .map_err(|e| Error::io("building the guest", std::io::Error::other(e)))??
    };
    let mut inputs: Vec<(String, Vec<u8>)> = vec![
        (
            "tree".into(),
            artifacts.tree.as_os_str().as_encoded_bytes().to_vec(),
        ),
        (
            "base".into(),
            base.as_ref()
                .map(|b| b.info.layers.join(","))
                .unwrap_or_default()
                .into_bytes(),
        ),
        (
            "steps".into(),
            format!("{:?}{:?}", file.steps, file.args).into_bytes(),
        ),
    ];
    for step in &file.steps {
        if let Instruction::Copy { sources, .. } = &step.instruction {
            for source in sources {
                for (relative, path) in context_files(&context, source, step.line)? {
                    let bytes = std::fs::read(&path)
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    let mode = std::fs::metadata(&path)
                        .map(|m| m.mode())
                        .unwrap_or_default();
                    inputs.push((format!("copy:{relative}:{mode:o}"), bytes));
                }
            }
        }
    }
    let key = cache::input_key(inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let mut layers = vec![key.clone()];
    layers.extend(base.iter().flat_map(|b| b.info.layers.clone()));
    let (mut env, mut workdir) = match &base {
        Some(base) => (base.info.env.clone(), base.info.workdir.clone()),
        None => (BTreeMap::new(), None),
    };
    for step in &file.steps {
        match &step.instruction {
            Instruction::Env(pairs) => env.extend(pairs.iter().cloned()),
            Instruction::Workdir(dir) => {
                workdir = Some(join(workdir.as_deref().unwrap_or("/"), dir))
            }
            _ => {}
        }
    }

    let layer_dir = store.layer_dir(&key);
    let cached = layer_dir.join("ready").exists();
    if cached {
        progress.report(&format!("template {}: layer {key} is cached", options.name));
    } else {
        std::fs::create_dir_all(layer_dir.parent().expect("a parent"))
            .map_err(|e| Error::io("creating the template cache", e))?;
        let _lock = cache::CacheLock::acquire(&layer_dir.with_extension("lock"))?;
        if !layer_dir.join("ready").exists() {
            let base_layers = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
            run_steps(&options, &file, &context, base_layers, &layer_dir).await?;
        }
    }
    let size = dir_size(&layer_dir.join("root"));
    let info = TemplateInfo {
        name: options.name.clone(),
        layers,
        base: file.base.clone(),
        env,
        workdir,
        defaults: options.defaults.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        size,
        build_seconds: if cached {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        },
    };
    store.record(&info)?;
    progress.report(&format!(
        "template {} ready ({:.1} MB layer) in {:.1} s",
        info.name,
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    ));
    Ok(info)
}

/// `dir` made absolute against `cwd`.
fn join(cwd: &str, dir: &str) -> String {
    if dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("{}/{dir}", cwd.trim_end_matches('/'))
    }
}

/// The files `source` names in `context` (a file, or a folder's files), as
/// (path relative to `source`'s parent, host path). Nothing outside
/// `context` (no `..`, no symbolic link out).
fn context_files(context: &Path, source: &str, line: usize) -> Result<Vec<(String, PathBuf)>> {
    let refuse = |why: String| {
        Error::InvalidArgument(format!("e2b.Dockerfile line {line}: COPY {source}: {why}"))
    };
    if source.contains(['*', '?', '[']) {
        return Err(refuse("wildcards are not supported".into()));
    }
    let path = context
        .join(source.trim_start_matches('/'))
        .canonicalize()
        .map_err(|e| refuse(format!("{e} (in the build context {})", context.display())))?;
    if !path.starts_with(context) {
        return Err(refuse("it is outside the build context".into()));
    }
    let mut found = Vec::new();
    let mut stack = vec![path.clone()];
    while let Some(next) = stack.pop() {
        let meta = std::fs::symlink_metadata(&next).map_err(|e| refuse(e.to_string()))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&next).map_err(|e| refuse(e.to_string()))?;
            stack.extend(entries.flatten().map(|e| e.path()));
        } else if meta.is_file() {
            let relative = next
                .strip_prefix(path.parent().unwrap_or(context))
                .unwrap_or(&next);
            found.push((relative.to_string_lossy().into_owned(), next));
        } else {
            return Err(refuse(format!(
                "{} is not a file or folder",
                next.display()
            )));
        }
    }
    found.sort();
    Ok(found)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&next) else {
            continue;
        };
        total += meta.blocks() * 512;
        if let Some(entries) = meta
            .is_dir()
            .then(|| std::fs::read_dir(&next).ok())
            .flatten()
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

fn step_failed(line: usize, what: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("e2b.Dockerfile line {line}: {what} failed: {why}"))
}

/// Runs the steps in a sandbox over `base_layers` and saves its writable
/// layer as `layer_dir/root`.
async fn run_steps(
    options: &BuildOptions,
    file: &Dockerfile,
    context: &Path,
    base_layers: Vec<PathBuf>,
    layer_dir: &Path,
) -> Result<()> {
    let progress = &options.progress;
    progress.report(&format!(
        "template {}: starting the build sandbox",
        options.name
    ));
    let mut sandbox = NamespaceExecutor::start(NamespaceConfig {
        cache_dir: options.cache_dir.clone(),
        progress: progress.clone(),
        memory_limit: u64::from(options.memory_mib) << 20,
        disk_limit: u64::from(options.disk_mib) << 20,
        network: NetworkPolicy::internet(),
        template_layers: base_layers,
        ..Default::default()
    })
    .await?;
    let result = async {
        let guest = sandbox.guest()?.clone();
        let build_env = trust_host_ca(&guest).await?;
        let mut env: BTreeMap<String, String> = file.args.clone();
        let mut cwd = "/".to_string();
        let mut user = "root".to_string();
        let total = file.steps.len();
        for (n, step) in file.steps.iter().enumerate() {
            let line = step.line;
            let summary = format!("{:?}", step.instruction);
            progress.report(&format!(
                "template {}: step {}/{total} (line {line}): {}",
                options.name,
                n + 1,
                summary.chars().take(100).collect::<String>()
            ));
            let as_user = |who: &str| {
                let mut o = CommandOptions::default().user(who).cwd(cwd.clone());
                o.env = env.clone();
                o.env.extend(build_env.clone());
                o
            };
            match &step.instruction {
                Instruction::Run(command) => {
                    let mut on_output = |_stream, text: &str| {
                        for l in text.lines() {
                            progress.report(&format!("  | {l}"));
                        }
                    };
                    let result = guest
                        .run_command(command, &as_user(&user), &mut on_output)
                        .await?;
                    if !result.success() {
                        let tail: Vec<&str> = result.stderr.lines().rev().take(5).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        return Err(step_failed(
                            line,
                            &format!("RUN {command}"),
                            format!("exit code {}: {}", result.exit_code, tail.join("\n")),
                        ));
                    }
                }
                Instruction::Copy { sources, dest } => {
                    let dest = join(&cwd, dest);
                    let into_dir = dest.ends_with('/') || sources.len() > 1;
                    // Staged as the user (the files API's owner), copied by
                    // root, so that the copies are root's, as Docker's are.
                    let mut modes = String::from("set -e\n");
                    let mut copies = String::from("set -e\n");
                    for (i, source) in sources.iter().enumerate() {
                        let staged = format!("{BUILD_DIR}/copy/{i}");
                        let source_path = context
                            .join(source.trim_start_matches('/'))
                            .canonicalize()
                            .map_err(|e| step_failed(line, "COPY", e))?;
                        let is_dir = source_path.is_dir();
                        for (relative, path) in context_files(context, source, line)? {
                            let bytes = std::fs::read(&path)
                                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                            let target = format!("{staged}/{relative}");
                            guest.write_file(&target, &bytes).await?;
                            let executable = std::fs::metadata(&path)
                                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
                            let mode = if executable { "0755" } else { "0644" };
                            modes += &format!("chmod {mode} {}\n", quote(&target));
                        }
                        let name = source_path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let from = format!("{staged}/{name}");
                        // A folder's contents go into `dest`, as Docker's COPY does.
                        let (from, to, parent) = if is_dir {
                            (format!("{from}/."), dest.clone(), dest.clone())
                        } else if into_dir {
                            let to = format!("{}/", dest.trim_end_matches('/'));
                            (from, to.clone(), to)
                        } else {
                            let parent = Path::new(&dest)
                                .parent()
                                .map_or("/".into(), |p| p.to_string_lossy().into_owned());
                            (from, dest.clone(), parent)
                        };
                        copies += &format!(
                            "mkdir -p {}\ncp -R {} {}\n",
                            quote(&parent),
                            quote(&from),
                            quote(&to)
                        );
                    }
                    for (script, who) in [(modes, &["user"][..]), (copies, &["root", "user"])] {
                        let result = first_able(&guest, &script, who, &as_user).await?;
                        if !result.success() {
                            return Err(step_failed(line, "COPY", result.stderr.trim()));
                        }
                    }
                }
                Instruction::Env(pairs) => env.extend(pairs.iter().cloned()),
                Instruction::Workdir(dir) => {
                    let new = join(&cwd, dir);
                    let mkdir = format!("mkdir -p {}", quote(&new));
                    let at_root = |who: &str| CommandOptions::default().user(who).cwd("/");
                    let made = first_able(&guest, &mkdir, &["root", "user"], &at_root).await?;
                    if !made.success() {
                        return Err(step_failed(
                            line,
                            &format!("WORKDIR {new}"),
                            made.stderr.trim(),
                        ));
                    }
                    cwd = new;
                }
                Instruction::User(name) => {
                    let known = guest
                        .run_command(
                            &format!("id -u {}", quote(name)),
                            &CommandOptions::default(),
                            &mut |_, _| {},
                        )
                        .await?;
                    if !known.success() {
                        return Err(step_failed(
                            line,
                            &format!("USER {name}"),
                            "no such account in the sandbox",
                        ));
                    }
                    user = name.clone();
                }
            }
        }
        Ok(())
    }
    .await;
    let closed = sandbox.close().await;
    result?;
    closed?;
    progress.report(&format!("template {}: saving the layer", options.name));
    let upper = sandbox.writable_layer()?;
    let layer_dir = layer_dir.to_path_buf();
    tokio::task::spawn_blocking(move || save_layer(&upper, &layer_dir))
        .await
        .map_err(|e| Error::io("saving the layer", std::io::Error::other(e)))?
}

/// Runs `script` as the first of `users` able to: the sandbox's root holds
/// no capabilities, so a folder the user owns (its home) is the user's to
/// write, as the system's folders are root's.
async fn first_able(
    guest: &GuestClient,
    script: &str,
    users: &[&str],
    options: &impl Fn(&str) -> CommandOptions,
) -> Result<crate::guest::CommandResult> {
    let mut last = None;
    for user in users {
        let result = guest
            .run_command(script, &options(user), &mut |_, _| {})
            .await?;
        if result.success() {
            return Ok(result);
        }
        last = Some(result);
    }
    Ok(last.unwrap_or_default())
}

/// For the build only: the host's CA bundle (a proxy's CA, say) in the
/// sandbox, and the variables that make pip, requests, curl and npm trust
/// it, plus the host's proxy variables.
async fn trust_host_ca(guest: &GuestClient) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        if let Ok(value) = std::env::var(var) {
            env.insert(var.to_string(), value);
        }
    }
    let host_ca = ["PIP_CERT", "SSL_CERT_FILE"]
        .iter()
        .find_map(std::env::var_os)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    if let Ok(bundle) = std::fs::read(&host_ca) {
        let path = format!("{BUILD_DIR}/host-ca.crt");
        guest.write_file(&path, &bundle).await?;
        for var in [
            "PIP_CERT",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
        ] {
            env.insert(var.to_string(), path.clone());
        }
    }
    Ok(env)
}

/// `text` quoted for the shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Copies the build sandbox's writable layer `upper` to `layer_dir/root`
/// (keeping overlayfs's whiteouts and opaque folders), gives its files back
/// the owners they have inside (the sandbox's ids are shifted on the host),
/// drops the build's `/etc/resolv.conf`, and marks the layer ready. Blocking.
fn save_layer(upper: &Path, layer_dir: &Path) -> Result<()> {
    let staging = layer_dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating the layer folder", e))?;
    let root = staging.join("root");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(upper)
        .arg(&root)
        .output()
        .map_err(|e| Error::io("copying the layer (cp)", e))?;
    if !copied.status.success() {
        return Err(Error::io(
            "copying the layer",
            std::io::Error::other(String::from_utf8_lossy(&copied.stderr).trim().to_string()),
        ));
    }
    let resolv = root.join("etc/resolv.conf");
    if std::fs::read_to_string(&resolv)
        .is_ok_and(|t| t == format!("nameserver {}\n", crate::namespace::network::DNS_FORWARDER))
    {
        let _ = std::fs::remove_file(&resolv);
    }
    unshift_owners(&root).map_err(|e| Error::io("giving the layer's files their owners", e))?;
    let _ = std::fs::remove_dir_all(layer_dir);
    std::fs::rename(&staging, layer_dir).map_err(|e| Error::io("finishing the layer", e))?;
    std::fs::write(layer_dir.join("ready"), "").map_err(|e| Error::io("finishing the layer", e))
}

/// Host ids `id_base + n` (the sandbox's id `n`) back to `n`, keeping modes
/// but for files' set-id bits.
fn unshift_owners(root: &Path) -> std::io::Result<()> {
    let base = cellbox_guest_init::launch::DEFAULT_ID_BASE;
    let count = cellbox_guest_init::launch::ID_COUNT;
    let back = |id: u32| {
        if (base..base + count).contains(&id) {
            id - base
        } else {
            id
        }
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, Some(back(meta.uid())), Some(back(meta.gid())))?;
        if !meta.file_type().is_symlink() {
            // A build's set-id file would be a host root's set-id file in the
            // cache: its bits go (inside, no_new_privs makes them useless anyway).
            let keep = if meta.is_dir() { 0o7777 } else { 0o1777 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & keep))?;
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path)?.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}
