//! The snapshots of one `cellbox serve`, each a [`Snapshot`] folder in the
//! server's snapshot folder (so they outlive sandboxes and the server):
//! taken of a sandbox, listed, deleted, and named as the template of new
//! sandboxes. E2B calls one by `ID:TAG` or `NAME:TAG` (optionally
//! `TEAM/NAME:TAG`); the tag here is always `default`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::fleet::Entry;
use crate::error::{Error, Result};
use crate::lock;
use crate::sandbox::Snapshot;

/// What the server adds to a snapshot folder.
const LABEL: &str = "e2b.json";
/// Where forks keep the snapshot they start from, while they start.
const SCRATCH: &str = ".forks";
/// Most snapshots one server keeps.
pub const MAX_SNAPSHOTS: usize = 100;

/// `$XDG_DATA_HOME/cellbox/snapshots`, else `~/.local/share/cellbox/snapshots`.
pub fn default_snapshot_dir() -> PathBuf {
    super::data_dir().join("snapshots")
}

/// How the API knows a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Label {
    pub id: String,
    pub name: Option<String>,
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// That sandbox's template.
    pub template: String,
}

impl Label {
    /// E2B's `snapshotID`: the name (else the id) with its tag.
    pub fn reference(&self) -> String {
        format!("{}:default", self.name.as_deref().unwrap_or(&self.id))
    }
}

/// One kept snapshot.
#[derive(Debug)]
pub struct Kept {
    pub label: Label,
    pub snapshot: Snapshot,
}

/// The server's snapshots, by id.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    kept: Mutex<BTreeMap<String, Arc<Kept>>>,
}

/// Whether `name` may name a snapshot: 1 to 64 of `a-z 0-9 - _ .`,
/// starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn new_id() -> Result<String> {
    let bytes: [u8; 10] = super::random_bytes("a snapshot id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_label(dir: &Path) -> Result<Label> {
    let file = dir.join(LABEL);
    let text =
        std::fs::read(&file).map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display())))
}

impl Snapshots {
    /// The snapshots kept in `dir` (none if it does not exist yet: it is
    /// made, private, by the first snapshot or fork); folders that are not
    /// snapshots are left alone, with a warning.
    pub fn open(dir: &Path) -> Result<Snapshots> {
        // What forks left behind when a server stopped mid-fork.
        let _ = std::fs::remove_dir_all(dir.join(SCRATCH));
        let mut kept = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        for entry in entries {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match (Snapshot::open(&path), read_label(&path)) {
                (Ok(snapshot), Ok(label)) => {
                    kept.insert(label.id.clone(), Arc::new(Kept { label, snapshot }));
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(folder = %path.display(), "not a snapshot, left alone: {e}");
                }
            }
        }
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            kept: Mutex::new(kept),
        })
    }

    /// Snapshots `entry`'s sandbox, under `name` if given (a snapshot that
    /// had the name is replaced).
    pub async fn take(&self, entry: &Entry, name: Option<String>) -> Result<Arc<Kept>> {
        if let Some(name) = &name
            && !valid_name(name)
        {
            return Err(Error::InvalidArgument(format!(
                "snapshot name {name:?}: use 1 to 64 of a-z, 0-9, '-', '_' and '.'"
            )));
        }
        self.check_room()?;
        let id = new_id()?;
        let dir = self.dir.join(&id);
        let snapshot = entry.sandbox.snapshot(&dir).await?;
        let label = Label {
            id: id.clone(),
            name,
            sandbox_id: entry.id.clone(),
            template: entry.spec.template.clone(),
        };
        if let Err(e) = crate::cache::write_json_atomically(&dir.join(LABEL), &label) {
            let _ = snapshot.delete();
            return Err(e);
        }
        let kept = Arc::new(Kept { label, snapshot });
        let replaced = {
            let mut all = lock(&self.kept);
            let replaced: Vec<_> = all
                .values()
                .filter(|k| k.label.name.is_some() && k.label.name == kept.label.name)
                .map(|k| k.label.id.clone())
                .collect();
            let replaced: Vec<_> = replaced.iter().filter_map(|id| all.remove(id)).collect();
            all.insert(id, kept.clone());
            replaced
        };
        for old in replaced {
            let _ = old.snapshot.clone().delete();
        }
        Ok(kept)
    }

    fn check_room(&self) -> Result<()> {
        if lock(&self.kept).len() < MAX_SNAPSHOTS {
            return Ok(());
        }
        Err(Error::LimitReached(format!(
            "this server keeps at most {MAX_SNAPSHOTS} snapshots; delete one first"
        )))
    }

    /// A new, empty-to-be folder for a fork's passing snapshot.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        Ok(self.dir.join(SCRATCH).join(new_id()?))
    }

    /// The snapshot `reference` names: `ID`, `NAME`, with `:default` and a
    /// `TEAM/` prefix allowed.
    pub fn find(&self, reference: &str) -> Option<Arc<Kept>> {
        let bare = reference.rsplit_once('/').map_or(reference, |(_, b)| b);
        let bare = match bare.rsplit_once(':') {
            Some((bare, "default")) => bare,
            Some(_) => return None,
            None => bare,
        };
        let all = lock(&self.kept);
        all.get(bare).cloned().or_else(|| {
            all.values()
                .find(|k| k.label.name.as_deref() == Some(bare))
                .cloned()
        })
    }

    /// The snapshots, oldest first, of sandbox `sandbox_id` and called
    /// `name` (each if given).
    pub fn list(&self, sandbox_id: Option<&str>, name: Option<&str>) -> Vec<Arc<Kept>> {
        let by_name = name.map(|n| self.find(n).map(|k| k.label.id.clone()));
        let mut matching: Vec<_> = lock(&self.kept)
            .values()
            .filter(|k| sandbox_id.is_none_or(|s| k.label.sandbox_id == s))
            .filter(|k| {
                by_name
                    .as_ref()
                    .is_none_or(|id| id.as_ref() == Some(&k.label.id))
            })
            .cloned()
            .collect();
        matching.sort_by_key(|k| (k.snapshot.created(), k.label.id.clone()));
        matching
    }

    /// Deletes the snapshot `reference` names; `false` if none does.
    pub fn delete(&self, reference: &str) -> Result<bool> {
        let Some(kept) = self.find(reference) else {
            return Ok(false);
        };
        lock(&self.kept).remove(&kept.label.id);
        kept.snapshot.clone().delete()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["a", "my-snapshot", "v1.2_b", &"x".repeat(64)] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", "a:b", "../x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn references_are_ids_or_names_with_the_default_tag() {
        let label = Label {
            id: "abc".into(),
            name: None,
            sandbox_id: "s".into(),
            template: "base".into(),
        };
        assert_eq!(label.reference(), "abc:default");
        let named = Label {
            name: Some("mine".into()),
            ..label
        };
        assert_eq!(named.reference(), "mine:default");
    }
}
