//! Running artefact builds (scripts and cargo) with their output streamed to
//! [`Progress`], and making each cached build happen once.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::cache::CacheLock;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Returns `dir` once `dir/ready` exists, running `build(dir)` first (under a
/// lock shared with other processes) when it does not.
pub(crate) fn ensure_built(
    dir: &Path,
    ready: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    crate::cache::check_trusted(dir)?;
    if dir.join(ready).exists() {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().unwrap_or(dir);
    let _lock = CacheLock::acquire(parent)?;
    if !dir.join(ready).exists() {
        build(dir)?;
    }
    if !dir.join(ready).exists() {
        return Err(Error::Artifact {
            what: format!("building {}", dir.display()),
            reason: format!("the build finished without {ready}"),
        });
    }
    Ok(dir.to_path_buf())
}

/// A cached build made by an embedded script: `files` (the script first) are
/// both its inputs and its cache key. Unless `cache_root/kind/<key>/ready`
/// exists, runs `bash script <that folder>` with progress. Blocking.
pub(crate) fn script_build(
    cache_root: &Path,
    kind: &str,
    ready: &str,
    files: &[(&str, &str)],
    what: &str,
    progress: &Progress,
) -> Result<PathBuf> {
    let key = script_key(files);
    ensure_built(&cache_root.join(kind).join(key), ready, |dir| {
        progress.report(&format!("{what} into {} (first run only)", dir.display()));
        run_embedded_script(files, &[dir], progress, what)
    })
}

/// The cache key of [`script_build`]'s `files`.
pub(crate) fn script_key(files: &[(&str, &str)]) -> String {
    crate::cache::input_key(files.iter().map(|(name, text)| (*name, text.as_bytes())))
}

/// Runs `command`, sending each line it prints to `progress`; on failure the
/// error carries the last lines.
pub(crate) fn run_logged(mut command: Command, progress: &Progress, what: &str) -> Result<()> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let (progress, tail) = (progress.clone(), tail.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                progress.report(&line);
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        })
    })
    .collect::<Vec<_>>();
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    readers.into_iter().for_each(|r| drop(r.join()));
    if status.success() {
        return Ok(());
    }
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    Err(Error::Artifact {
        what: what.to_string(),
        reason: format!("failed ({status}):\n{tail}"),
    })
}

/// Writes embedded `files` (the first is the script) to a temporary folder
/// and runs the script with bash and `args`.
pub(crate) fn run_embedded_script(
    files: &[(&str, &str)],
    args: &[&Path],
    progress: &Progress,
    what: &str,
) -> Result<()> {
    let src = tempfile::tempdir().map_err(|e| Error::io("creating a build folder", e))?;
    for (name, text) in files {
        let path = src.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("writing {name}"), e))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {name}"), e))?;
    }
    let mut command = Command::new("bash");
    command.arg(src.path().join(files[0].0)).args(args);
    run_logged(command, progress, what)
}
