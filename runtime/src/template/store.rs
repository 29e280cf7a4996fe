//! Built templates on disk, in the artefact cache:
//!
//! ```text
//! templates/layers/<key>/root    one build's layer (files over its base), by content key
//! templates/layers/<key>/ready   written last
//! templates/names/<name>.json    a template: its layers (own first), variables, folder
//! ```
//! A layer is kept while any template uses it (as its own or as a base's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A built template, as `cellbox template list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    /// Layer keys, its own first, then its bases' (the default root under all).
    pub layers: Vec<String>,
    /// The template it was built `FROM`, if not the default one.
    pub base: Option<String>,
    /// Variables of its sandboxes' code and commands (`ENV`, bases' first).
    pub env: BTreeMap<String, String>,
    /// Working folder of its sandboxes (`WORKDIR`).
    pub workdir: Option<String>,
    /// What its sandboxes start with and get (E2B's template options).
    #[serde(default)]
    pub defaults: SandboxDefaults,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Bytes its own layer takes.
    pub size: u64,
    /// How long its build took, in seconds (0 when it came from the cache).
    pub build_seconds: f64,
}

/// What each sandbox of a template starts with and gets: E2B's template
/// options (`e2b template build --cmd --ready-cmd --cpu-count --memory-mb`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDefaults {
    /// Started in the background (as `user`, `timeout 0`) in each new sandbox.
    pub start_cmd: Option<String>,
    /// Run until it succeeds before a new sandbox is handed over (at most
    /// [`READY_WITHIN`]).
    pub ready_cmd: Option<String>,
    /// vCPUs and memory of its sandboxes (the server's defaults otherwise).
    pub cpu_count: Option<u8>,
    pub memory_mb: Option<u32>,
}

/// How long a template's ready command may take to succeed.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// A template, ready for a sandbox: its layers' folders, top first.
#[derive(Debug, Clone)]
pub struct Template {
    pub info: TemplateInfo,
    pub layers: Vec<PathBuf>,
}

/// Whether `name` may name a template: 1–63 lowercase letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit (E2B's aliases).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// [`valid_name`], as an error naming the rule.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "`{name}` is not a template name (1-63 lowercase letters, digits, '-', '_' or '.')"
        )))
    }
}

/// The templates of one artefact cache.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    /// The templates kept in `cache_root` (see [`crate::default_cache_dir`]).
    pub fn open(cache_root: &Path) -> TemplateStore {
        TemplateStore {
            root: cache_root.join("templates"),
        }
    }

    fn info_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(format!("{name}.json"))
    }

    /// Where the layer with `key` lives (its files are in `root/`).
    pub(crate) fn layer_dir(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(key)
    }

    /// The template called `name`.
    pub fn get(&self, name: &str) -> Result<Template> {
        check_name(name)?;
        let path = self.info_path(name);
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::InvalidArgument(format!(
                "no template named `{name}` (build one with `cellbox template build --name {name}`)"
            )),
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        let info: TemplateInfo = serde_json::from_slice(&text).map_err(|e| Error::Artifact {
            what: format!("template {name}"),
            reason: format!("{} does not parse: {e}", path.display()),
        })?;
        let layers = info
            .layers
            .iter()
            .map(|key| {
                let dir = self.layer_dir(key);
                if dir.join("ready").exists() {
                    Ok(dir.join("root"))
                } else {
                    Err(Error::Artifact {
                        what: format!("template {name}"),
                        reason: format!("its layer {key} is missing; build it again"),
                    })
                }
            })
            .collect::<Result<_>>()?;
        Ok(Template { info, layers })
    }

    /// Every template, by name.
    pub fn list(&self) -> Result<Vec<TemplateInfo>> {
        let dir = self.root.join("names");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|name| valid_name(name))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| self.get(name).map(|t| t.info))
            .collect()
    }

    /// Records `info` under its name (replacing a template of that name).
    pub(crate) fn record(&self, info: &TemplateInfo) -> Result<()> {
        check_name(&info.name)?;
        let path = self.info_path(&info.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let replaced = self
            .get(&info.name)
            .map(|t| t.info.layers)
            .unwrap_or_default();
        crate::cache::write_json_atomically(&path, info)?;
        self.collect_garbage(&replaced)
    }

    /// Deletes the template `name` (and the layers nothing uses any more);
    /// false if there was none. A template others are built on stays
    /// until they are deleted.
    pub fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let dependents: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|t| t.base.as_deref() == Some(name))
            .map(|t| t.name)
            .collect();
        if !dependents.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "template `{name}` is the base of {}; delete those first",
                dependents.join(", ")
            )));
        }
        let Ok(template) = self.get(name) else {
            return Ok(false);
        };
        std::fs::remove_file(self.info_path(name))
            .map_err(|e| Error::io(format!("deleting template {name}"), e))?;
        self.collect_garbage(&template.info.layers)?;
        Ok(true)
    }

    /// Removes those of the layers `candidates` (a deleted or replaced
    /// template's) that no template uses any more.
    fn collect_garbage(&self, candidates: &[String]) -> Result<()> {
        let used: BTreeSet<String> = self.list()?.into_iter().flat_map(|t| t.layers).collect();
        for key in candidates.iter().filter(|k| !used.contains(*k)) {
            let dir = self.layer_dir(key);
            let _ = std::fs::remove_file(dir.join("ready"));
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("deleting layer {key}"), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, layers: &[&str], base: Option<&str>) -> TemplateInfo {
        TemplateInfo {
            name: name.into(),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            base: base.map(str::to_string),
            env: BTreeMap::new(),
            workdir: None,
            defaults: SandboxDefaults::default(),
            created: 0,
            size: 0,
            build_seconds: 0.0,
        }
    }

    #[test]
    fn templates_are_recorded_listed_and_deleted_with_their_layers() {
        let cache = tempfile::tempdir().unwrap();
        let store = TemplateStore::open(cache.path());
        for key in ["k1", "k2", "orphan"] {
            let dir = store.layer_dir(key);
            std::fs::create_dir_all(dir.join("root")).unwrap();
            std::fs::write(dir.join("ready"), "").unwrap();
        }
        store.record(&info("one", &["orphan"], None)).unwrap();
        store.record(&info("one", &["k1"], None)).unwrap();
        assert!(
            !store.layer_dir("orphan").exists(),
            "a replaced template's layer goes"
        );
        store
            .record(&info("two", &["k2", "k1"], Some("one")))
            .unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(store.get("two").unwrap().layers.len(), 2);
        let refused = store.delete("one").unwrap_err().to_string();
        assert!(refused.contains("base of two"), "{refused}");
        assert!(store.delete("two").unwrap());
        assert!(!store.layer_dir("k2").exists() && store.layer_dir("k1").exists());
        assert!(!store.delete("two").unwrap());
        assert!(
            store
                .get("two")
                .unwrap_err()
                .to_string()
                .contains("no template named")
        );
        assert!(
            store
                .get("../x")
                .unwrap_err()
                .to_string()
                .contains("not a template name")
        );
    }
}
