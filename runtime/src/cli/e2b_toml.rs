//! `e2b.toml`, the file E2B's CLI writes beside a template's Dockerfile and
//! reads on its next build: the template's name and id, its Dockerfile and
//! its sandbox options. `cellbox template build` writes and reads the same
//! file, so a folder works with either tool.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file's name in the template's folder.
pub const FILE: &str = "e2b.toml";

/// What the file holds (unknown keys, such as E2B's `team_id`, are kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct E2bToml {
    pub template_id: Option<String>,
    pub template_name: Option<String>,
    pub dockerfile: Option<String>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub cpu_count: Option<u8>,
    pub memory_mb: Option<u32>,
    #[serde(flatten)]
    pub other: toml::Table,
}

impl E2bToml {
    /// The folder's `e2b.toml`; empty if it has none.
    pub fn read(folder: &Path) -> Result<E2bToml, String> {
        let path = folder.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(E2bToml::default()),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Writes it into the folder, with E2B's header comment.
    pub fn write(&self, folder: &Path) -> Result<(), String> {
        let path = folder.join(FILE);
        let body = toml::to_string(self).map_err(|e| e.to_string())?;
        let name = self.template_name.as_deref().unwrap_or("NAME");
        let text = format!(
            "# This is a config for a sandbox template, written by `cellbox template build`\n\
             # (E2B's CLI reads and writes the same file). Use it from E2B's SDK:\n\
             # Sandbox.create(\"{name}\"), or from cellbox: `cellbox run --template {name}`.\n\n{body}"
        );
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_s_file_is_read_and_written_back_with_its_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let written_by_e2b = "team_id = \"t-1\"\nstart_cmd = \"python -m http.server 8000\"\n\
                              ready_cmd = \"curl -s localhost:8000\"\ndockerfile = \"e2b.Dockerfile\"\n\
                              template_name = \"web\"\ntemplate_id = \"abc123\"\ncpu_count = 2\nmemory_mb = 1024\n";
        std::fs::write(dir.path().join(FILE), written_by_e2b).unwrap();
        let config = E2bToml::read(dir.path()).unwrap();
        assert_eq!(config.template_name.as_deref(), Some("web"));
        assert_eq!(
            config.start_cmd.as_deref(),
            Some("python -m http.server 8000")
        );
        assert_eq!((config.cpu_count, config.memory_mb), (Some(2), Some(1024)));
        config.write(dir.path()).unwrap();
        let again = E2bToml::read(dir.path()).unwrap();
        assert_eq!(again, config);
        assert_eq!(
            again.other.get("team_id").and_then(|v| v.as_str()),
            Some("t-1")
        );
        assert_eq!(
            E2bToml::read(&dir.path().join("none")).unwrap(),
            E2bToml::default()
        );
        std::fs::write(dir.path().join(FILE), "cpu_count = \"many\"").unwrap();
        assert!(E2bToml::read(dir.path()).unwrap_err().contains(FILE));
    }
}
