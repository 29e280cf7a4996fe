//! envd's `filesystem.Filesystem` service: stat, list, make, move and remove
//! paths in the sandbox (relative paths are under `/home/user`); watching
//! folders is in [`super::watch`].

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::connect::{self, Code, RpcError};
use crate::guest::FileStat;
use crate::sandbox::Sandbox;
use crate::serve::clock::rfc3339;

/// The most entries one `ListDir` answers with.
const MAX_ENTRIES: usize = 100_000;

/// `POST /filesystem.Filesystem/{method}`.
pub async fn call(
    State(envd): State<super::Envd>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == "WatchDir" {
        let started = async {
            let messages = connect::stream_request(&headers, &body)?;
            let [request] = <[_; 1]>::try_from(messages).map_err(|m| {
                RpcError::invalid(format!("WatchDir takes one message, not {}", m.len()))
            })?;
            super::watch::stream(&envd, &request).await
        };
        return started.await.unwrap_or_else(connect::stream_error);
    }
    let result = async {
        let request = connect::unary_request(&headers, &body)?;
        let files = envd.sandbox.files();
        match method.as_str() {
            "Stat" => {
                let path = request.string("path")?;
                Ok(json!({"entry": entry(&files.stat(&path).await?)}))
            }
            "MakeDir" => {
                let path = request.string("path")?;
                if files.exists(&path).await? {
                    return Err(RpcError::new(
                        Code::AlreadyExists,
                        format!("{path} already exists"),
                    ));
                }
                files.make_dir(&path).await?;
                Ok(json!({"entry": entry(&files.stat(&path).await?)}))
            }
            "Move" => {
                let (from, to) = (request.string("source")?, request.string("destination")?);
                files.rename(&from, &to).await?;
                Ok(json!({"entry": entry(&files.stat(&to).await?)}))
            }
            "ListDir" => {
                let path = request.string("path")?;
                let depth = request.u32("depth")?.max(1);
                Ok(json!({"entries": list(&envd.sandbox, &path, depth).await?}))
            }
            "Remove" => {
                files.remove(&request.string("path")?).await?;
                Ok(json!({}))
            }
            "CreateWatcher" => super::watch::create(&envd, &request).await,
            "GetWatcherEvents" => super::watch::events(&envd, &request).await,
            "RemoveWatcher" => super::watch::remove(&envd, &request),
            other => Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem has no method {other}"),
            )),
        }
    }
    .await;
    connect::unary(result)
}

/// The entries under `path`, `depth` levels deep, each folder followed by
/// its contents (as E2B lists them).
async fn list(sandbox: &Sandbox, path: &str, depth: u32) -> Result<Vec<Value>, RpcError> {
    let files = sandbox.files();
    if !files.stat(path).await?.is_dir {
        return Err(RpcError::invalid(format!("{path} is not a folder")));
    }
    let mut entries = Vec::new();
    // What is still to list, the next last; with the level it is at.
    let mut pending: Vec<(FileStat, u32)> = Vec::new();
    let push_contents = |pending: &mut Vec<_>, contents: Vec<FileStat>, level| {
        pending.extend(contents.into_iter().rev().map(|stat| (stat, level)));
    };
    push_contents(&mut pending, files.list(path).await?, 1);
    while let Some((stat, level)) = pending.pop() {
        if stat.is_dir && stat.symlink_target.is_none() && level < depth {
            push_contents(&mut pending, files.list(&stat.path).await?, level + 1);
        }
        entries.push(entry(&stat));
        if entries.len() > MAX_ENTRIES {
            return Err(RpcError::invalid(format!(
                "{path} has more than {MAX_ENTRIES} entries at depth {depth}; list less deep"
            )));
        }
    }
    Ok(entries)
}

const FILE_TYPE_BITS: u32 = 0o170_000;
const SYMLINK: u32 = 0o120_000;

/// An `EntryInfo` message.
pub fn entry(stat: &FileStat) -> Value {
    let kind = if stat.is_dir {
        "FILE_TYPE_DIRECTORY"
    } else if stat.mode & FILE_TYPE_BITS == SYMLINK {
        "FILE_TYPE_SYMLINK"
    } else {
        "FILE_TYPE_FILE"
    };
    let mut entry = json!({
        "name": stat.name,
        "type": kind,
        "path": stat.path,
        "size": stat.size.to_string(),
        "mode": stat.mode & 0o777,
        "permissions": permissions(stat.mode),
        "owner": stat.owner,
        "group": stat.group,
        "modifiedTime": rfc3339(stat.modified, None),
    });
    if let Some(target) = &stat.symlink_target {
        entry["symlinkTarget"] = json!(target);
    }
    if !stat.metadata.is_empty() {
        entry["metadata"] = json!(stat.metadata);
    }
    entry
}

/// `ls -l`'s mode column, e.g. `drwxr-xr-x`.
fn permissions(mode: u32) -> String {
    let kind = match mode & FILE_TYPE_BITS {
        0o040_000 => 'd',
        SYMLINK => 'l',
        _ => '-',
    };
    let mut text = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_type_and_permissions() {
        let stat = |mode, is_dir| FileStat {
            name: "a".into(),
            path: "/home/user/a".into(),
            is_dir,
            size: 12,
            mode,
            modified: 0,
            owner: "user".into(),
            group: "user".into(),
            symlink_target: None,
            metadata: Default::default(),
        };
        let file = entry(&stat(0o100_644, false));
        assert!(file.get("metadata").is_none(), "only where there is some");
        assert_eq!(file["type"], "FILE_TYPE_FILE");
        assert_eq!(file["permissions"], "-rw-r--r--");
        assert_eq!(file["mode"], 0o644);
        assert_eq!(file["size"], "12");
        assert_eq!(
            (&file["owner"], &file["group"]),
            (&json!("user"), &json!("user"))
        );
        assert!(file.get("symlinkTarget").is_none(), "only for a link");
        let folder = entry(&stat(0o040_755, true));
        assert_eq!(folder["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(folder["permissions"], "drwxr-xr-x");
        let link = entry(&stat(0o120_777, false));
        assert_eq!(link["type"], "FILE_TYPE_SYMLINK");
        assert_eq!(link["permissions"], "lrwxrwxrwx");
    }
}
