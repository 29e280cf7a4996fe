//! The server's API key: given, or made on first start and kept in the
//! user's configuration folder (mode 0600), so that the SDKs and
//! `cellbox sandbox` commands keep working across restarts.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `$XDG_CONFIG_HOME/cellbox/api-key`, else `~/.config/cellbox/api-key`.
pub fn default_key_file() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    config.join("cellbox").join("api-key")
}

/// A new key in E2B's shape (`e2b_` and 40 hex digits).
pub fn generate() -> Result<String> {
    let bytes: [u8; 20] = super::super::random_bytes("an API key")?;
    Ok(format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The key kept in `file`, or a new one written there; `true` if new.
pub fn load_or_create(file: &Path) -> Result<(String, bool)> {
    match std::fs::read_to_string(file) {
        Ok(key) if key.trim().len() >= 16 => return Ok((key.trim().to_string(), false)),
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "{} holds no valid API key (at least 16 characters); delete it to make a new one",
                file.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    }
    let key = generate()?;
    let folder = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::io(format!("creating {}", folder.display()), e))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(key.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellbox/api-key");
        let (key, created) = load_or_create(&file).unwrap();
        assert!(
            created && key.starts_with("e2b_") && key.len() == 44,
            "{key}"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&file).unwrap(), (key, false));
        std::fs::write(&file, "short").unwrap();
        assert!(load_or_create(&file).is_err());
    }
}
