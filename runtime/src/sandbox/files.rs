//! `sandbox.files()`: the sandbox's file system (in the heavy backend's
//! guest; relative paths are under `/home/user`).

use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Sandbox;
use crate::error::{Error, Result};
use crate::guest::{FileStat, FolderWatch};

/// The files of a [`Sandbox`].
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub(super) sandbox: &'a Sandbox,
}

/// `path` made absolute under `/home/user`.
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/home/user/{path}")
    }
}

impl Files<'_> {
    /// Reads a file's bytes.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.sandbox
            .moved_client()
            .await?
            .read_file(&absolute(path))
            .await
    }

    /// Reads a UTF-8 text file.
    pub async fn read_text(&self, path: &str) -> Result<String> {
        String::from_utf8(self.read(path).await?).map_err(|_| {
            Error::InvalidArgument(format!("{path} is not UTF-8 text; read it as bytes"))
        })
    }

    /// Writes a file (created or replaced, with its parent folders).
    pub async fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .write_file(&absolute(path), data)
            .await
    }

    /// Streams a file into `out`; returns the bytes copied.
    pub async fn read_to(&self, path: &str, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64> {
        self.sandbox
            .moved_client()
            .await?
            .read_file_to(&absolute(path), out)
            .await
    }

    /// Writes everything `input` yields to a file (created or replaced, with
    /// its parent folders), streaming; returns the bytes written.
    pub async fn write_from(
        &self,
        path: &str,
        input: &mut (impl AsyncRead + Unpin),
    ) -> Result<u64> {
        self.sandbox
            .moved_client()
            .await?
            .write_file_from(&absolute(path), input)
            .await
    }

    /// Streams a host file into the sandbox; returns the bytes copied.
    pub async fn upload(&self, host_path: impl AsRef<Path>, path: &str) -> Result<u64> {
        self.sandbox
            .moved_client()
            .await?
            .upload(host_path, &absolute(path))
            .await
    }

    /// Streams a sandbox file to the host; returns the bytes copied.
    pub async fn download(&self, path: &str, host_path: impl AsRef<Path>) -> Result<u64> {
        self.sandbox
            .moved_client()
            .await?
            .download(&absolute(path), host_path)
            .await
    }

    /// The entries of a folder.
    pub async fn list(&self, path: &str) -> Result<Vec<FileStat>> {
        self.sandbox
            .moved_client()
            .await?
            .list_dir(&absolute(path))
            .await
    }

    /// Creates a folder and its parents.
    pub async fn make_dir(&self, path: &str) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .make_dir(&absolute(path))
            .await
    }

    /// Removes a file or a folder with its contents.
    pub async fn remove(&self, path: &str) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .remove(&absolute(path))
            .await
    }

    /// Renames (moves) a file or folder.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let client = self.sandbox.moved_client().await?;
        client.rename(&absolute(from), &absolute(to)).await
    }

    /// Whether a path exists.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        self.sandbox
            .moved_client()
            .await?
            .exists(&absolute(path))
            .await
    }

    /// Watches folder `path` (with `recursive`, everything below it, new
    /// folders included): changes arrive from [`FolderWatch::next`].
    pub async fn watch_dir(&self, path: &str, recursive: bool) -> Result<FolderWatch> {
        self.sandbox
            .moved_client()
            .await?
            .watch_dir(&absolute(path), recursive)
            .await
    }

    /// Keeps string pairs on the file at `path` (extended attributes
    /// `user.e2b.*`; keys are lowercased): [`FileStat::metadata`] from then on.
    pub async fn set_metadata(
        &self,
        path: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .set_metadata(&absolute(path), metadata)
            .await
    }

    /// A path's type, size and times.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        self.sandbox
            .moved_client()
            .await?
            .stat(&absolute(path))
            .await
    }
}
