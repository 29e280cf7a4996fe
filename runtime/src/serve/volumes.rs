//! Volumes (E2B's `Volume` API): named folders the server keeps across
//! restarts, mounted into namespace sandboxes at the paths their creators
//! ask for, and read and written through the volume content API with each
//! volume's own token ([`super::volume_files`]) whether or not a sandbox
//! has it mounted. The list lives in one private file (`volumes.json`), each
//! volume's files in a folder beside it; the folders' files are owned by
//! the sandbox's ids as the host sees them (`user` is host uid
//! `DEFAULT_ID_BASE + 1000`), so every sandbox sees them as their own.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lock;

/// Most volumes one server keeps.
pub const MAX_VOLUMES: usize = 100;
/// The host id of the sandbox's id 0 (root-started namespace sandboxes).
pub const ID_BASE: u32 = cellbox_guest_init::launch::DEFAULT_ID_BASE;
/// The sandbox's `user`, who owns what the content API writes by default.
pub const USER: u32 = 1000;

/// One volume as kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    /// The bearer token of its content API.
    token: String,
}

impl Volume {
    /// Whether `given` is this volume's token (in constant time).
    pub fn token_is(&self, given: &str) -> bool {
        super::guard::same_secret(given.as_bytes(), self.token.as_bytes())
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

pub use super::refusal::Refusal;

/// The volumes of one server.
#[derive(Debug)]
pub struct Volumes {
    dir: PathBuf,
    list: Mutex<BTreeMap<String, Volume>>,
}

impl Volumes {
    /// The volumes kept in `dir` (made if missing, private).
    pub fn open(dir: &Path) -> Result<Volumes> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let index = dir.join("volumes.json");
        let list: Vec<Volume> = match std::fs::read(&index) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidArgument(format!("{} is not a volume list: {e}", index.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("reading {}", index.display()), e)),
        };
        let list = list.into_iter().map(|v| (v.id.clone(), v)).collect();
        Ok(Volumes {
            dir: dir.to_path_buf(),
            list: Mutex::new(list),
        })
    }

    /// Makes an empty volume called `name` (letters, digits, `_` and `-`).
    pub fn create(&self, name: &str) -> std::result::Result<Volume, Refusal> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(Refusal::Invalid(format!(
                "a volume name is 1 to 128 letters, digits, `_` and `-`, not {name:?}"
            )));
        }
        let mut list = lock(&self.list);
        if list.values().any(|v| v.name == name) {
            return Err(Refusal::NameTaken(format!(
                "a volume named {name} exists already"
            )));
        }
        if list.len() >= MAX_VOLUMES {
            return Err(Refusal::Full(format!(
                "{MAX_VOLUMES} volumes are kept already: destroy one first"
            )));
        }
        let failed = |e: Error| Refusal::Invalid(e.to_string());
        let volume = Volume {
            id: format!("vol-{}", super::random_id("a volume id").map_err(failed)?),
            name: name.into(),
            token: super::random_id("a volume token").map_err(failed)?,
        };
        let folder = self.folder(&volume.id);
        std::fs::create_dir(&folder)
            .and_then(|()| {
                std::os::unix::fs::chown(&folder, Some(ID_BASE + USER), Some(ID_BASE + USER))
            })
            .map_err(|e| Refusal::Invalid(format!("creating {}: {e}", folder.display())))?;
        list.insert(volume.id.clone(), volume.clone());
        if let Err(e) = self.save(&list) {
            list.remove(&volume.id);
            let _ = std::fs::remove_dir_all(&folder);
            return Err(failed(e));
        }
        Ok(volume)
    }

    /// The volume `id_or_name` names.
    pub fn get(&self, id_or_name: &str) -> std::result::Result<Volume, Refusal> {
        let list = lock(&self.list);
        list.get(id_or_name)
            .or_else(|| list.values().find(|v| v.name == id_or_name))
            .cloned()
            .ok_or_else(|| Refusal::NotFound(format!("volume {id_or_name} not found")))
    }

    /// Every volume, by id.
    pub fn list(&self) -> Vec<Volume> {
        lock(&self.list).values().cloned().collect()
    }

    /// Removes the volume and its files.
    pub fn destroy(&self, id: &str) -> std::result::Result<(), Refusal> {
        let mut list = lock(&self.list);
        let Some(volume) = list.remove(id) else {
            return Err(Refusal::NotFound(format!("volume {id} not found")));
        };
        if let Err(e) = self.save(&list) {
            list.insert(volume.id.clone(), volume);
            return Err(Refusal::Invalid(e.to_string()));
        }
        let _ = std::fs::remove_dir_all(self.folder(id));
        Ok(())
    }

    /// Where a volume's files are on the host.
    pub fn folder(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn save(&self, list: &BTreeMap<String, Volume>) -> Result<()> {
        let all: Vec<&Volume> = list.values().collect();
        let bytes = serde_json::to_vec_pretty(&all).expect("volumes serialize");
        crate::cache::write_private_atomically(&self.dir.join("volumes.json"), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_named_kept_and_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = Volumes::open(dir.path()).unwrap();
        let data = volumes.create("data_1").unwrap();
        assert!(volumes.folder(&data.id).is_dir());
        assert!(matches!(
            volumes.create("data_1"),
            Err(Refusal::NameTaken(_))
        ));
        for bad in ["", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(
                matches!(volumes.create(bad), Err(Refusal::Invalid(_))),
                "{bad}"
            );
        }
        let again = Volumes::open(dir.path()).unwrap();
        assert_eq!(again.get("data_1").unwrap(), data);
        assert_eq!(again.get(&data.id).unwrap(), data);
        assert!(again.get(&data.id).unwrap().token_is(data.token()));
        assert!(!data.token_is("not-it"));
        again.destroy(&data.id).unwrap();
        assert!(!again.folder(&data.id).exists());
        assert!(matches!(again.destroy(&data.id), Err(Refusal::NotFound(_))));
        assert!(Volumes::open(dir.path()).unwrap().list().is_empty());
    }
}
