//! Secrets (E2B's `Secret` API): named values that are written, never read
//! back through the API. Kept in one private file (mode 600, written aside
//! and renamed into place) so that they outlive the server. A value is a
//! [`SecretValue`], which no `Debug` or log shows.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lock;

/// Most secrets one server keeps.
pub const MAX_SECRETS: usize = 1000;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// A secret's value: shown as `<secret>` wherever it is formatted, from the
/// request that brings it to the file that keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// One secret as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub id: String,
    pub name: String,
    pub version: u64,
    pub metadata: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    value: SecretValue,
}

pub use super::refusal::Refusal;

/// The secrets of one server.
#[derive(Debug)]
pub struct Secrets {
    file: PathBuf,
    kept: Mutex<Vec<Secret>>,
}

/// Why `name` cannot name a secret (`None`: it can): as E2B's SDK checks,
/// it is put into `${e2b.secrets.NAME}` placeholders.
fn invalid_name(name: &str) -> Option<String> {
    let bad = |c: char| c == '{' || c == '}' || c.is_control();
    if name.is_empty() || name.len() > 256 || name.chars().any(bad) {
        return Some(format!(
            "secret name {name:?} is not usable: 1 to 256 characters, none of them '{{', '}}' or control characters"
        ));
    }
    None
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Secrets {
    /// The secrets kept in `file` (none if it does not exist yet).
    pub fn open(file: &Path) -> Result<Secrets> {
        let kept = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        };
        Ok(Secrets {
            file: file.to_path_buf(),
            kept: Mutex::new(kept),
        })
    }

    /// Every secret, oldest first.
    pub fn list(&self) -> Vec<Secret> {
        lock(&self.kept).clone()
    }

    /// The secret with id or name `key`.
    pub fn get(&self, key: &str) -> Result<Secret, Refusal> {
        lock(&self.kept)
            .iter()
            .find(|s| s.id == key || s.name == key)
            .cloned()
            .ok_or_else(|| Refusal::NotFound(format!("secret {key} not found")))
    }

    /// The current value of the secret named `name`: for the egress proxy
    /// only, never for an API answer.
    pub fn value_of(&self, name: &str) -> Option<SecretValue> {
        lock(&self.kept)
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.clone())
    }

    pub fn create(
        &self,
        name: &str,
        value: SecretValue,
        metadata: BTreeMap<String, String>,
    ) -> Result<Result<Secret, Refusal>> {
        if let Some(why) = invalid_name(name).or_else(|| value.invalid()) {
            return Ok(Err(Refusal::Invalid(why)));
        }
        let mut kept = lock(&self.kept);
        if kept.iter().any(|s| s.name == name) {
            return Ok(Err(Refusal::NameTaken(format!(
                "a secret named {name} exists already"
            ))));
        }
        if kept.len() >= MAX_SECRETS {
            return Ok(Err(Refusal::Full(format!(
                "this server keeps at most {MAX_SECRETS} secrets"
            ))));
        }
        let bytes: [u8; 16] = super::random_bytes("a secret id")?;
        let id = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let at = now();
        let secret = Secret {
            id,
            name: name.to_string(),
            version: 1,
            metadata,
            created_at: at,
            updated_at: at,
            value,
        };
        kept.push(secret.clone());
        self.save(&kept)?;
        Ok(Ok(secret))
    }

    /// A new value (its next version), and new metadata if given.
    pub fn update(
        &self,
        key: &str,
        value: SecretValue,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Result<Secret, Refusal>> {
        if let Some(why) = value.invalid() {
            return Ok(Err(Refusal::Invalid(why)));
        }
        let mut kept = lock(&self.kept);
        let Some(secret) = kept.iter_mut().find(|s| s.id == key || s.name == key) else {
            return Ok(Err(Refusal::NotFound(format!("secret {key} not found"))));
        };
        secret.value = value;
        secret.version += 1;
        secret.updated_at = now().max(secret.updated_at);
        if let Some(metadata) = metadata {
            secret.metadata = metadata;
        }
        let updated = secret.clone();
        self.save(&kept)?;
        Ok(Ok(updated))
    }

    /// Removes the secret; `false` if there was none.
    pub fn destroy(&self, key: &str) -> Result<bool> {
        let mut kept = lock(&self.kept);
        let before = kept.len();
        kept.retain(|s| s.id != key && s.name != key);
        if kept.len() == before {
            return Ok(false);
        }
        self.save(&kept)?;
        Ok(true)
    }

    /// Writes `kept` aside (mode 600, a new folder 700) and renames it into place.
    fn save(&self, kept: &[Secret]) -> Result<()> {
        if let Some(dir) = self.file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("making {}", dir.display()), e))?;
        }
        let bytes = serde_json::to_vec(kept).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        crate::cache::write_private_atomically(&self.file, &bytes)
    }
}

impl SecretValue {
    /// The value itself: for the request the egress proxy sends on only.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Why it cannot be kept (`None`: it can).
    fn invalid(&self) -> Option<String> {
        (self.0.len() > MAX_VALUE).then(|| format!("a secret's value is at most {MAX_VALUE} bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> SecretValue {
        SecretValue(text.into())
    }

    #[test]
    fn secrets_are_kept_write_only_and_outlive_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data/secrets.json");
        let secrets = Secrets::open(&file).unwrap();
        let made = secrets
            .create("openai-key", value("sk-1"), BTreeMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(made.version, 1);
        assert!(
            !format!("{made:?}").contains("sk-1"),
            "Debug never shows a value"
        );
        assert!(matches!(
            secrets
                .create("openai-key", value("x"), BTreeMap::new())
                .unwrap(),
            Err(Refusal::NameTaken(_))
        ));
        assert!(matches!(
            secrets
                .create("bad}name", value("x"), BTreeMap::new())
                .unwrap(),
            Err(Refusal::Invalid(_))
        ));
        let updated = secrets
            .update(&made.id, value("sk-2"), None)
            .unwrap()
            .unwrap();
        assert_eq!((updated.version, updated.name.as_str()), (2, "openai-key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another server on the same file sees them.
        let again = Secrets::open(&file).unwrap();
        assert_eq!(again.get("openai-key").unwrap().id, made.id);
        assert_eq!(again.value_of("openai-key"), Some(value("sk-2")));
        assert!(again.destroy("openai-key").unwrap());
        assert!(!again.destroy("openai-key").unwrap());
        assert!(Secrets::open(&file).unwrap().list().is_empty());
    }
}
