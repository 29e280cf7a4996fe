//! File metadata (E2B's `files.write(..., metadata=...)`): string pairs kept
//! on a file as `user.e2b.<key>` extended attributes, so that they stay with
//! it through renames and copies that keep attributes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;

/// The attribute name prefix.
const PREFIX: &str = "user.e2b.";
/// Most pairs on one file.
pub const MAX_PAIRS: usize = 64;
/// Longest key and value.
pub const MAX_KEY: usize = 200;
pub const MAX_VALUE: usize = 4096;

fn c_path(path: &str) -> std::io::Result<CString> {
    CString::new(std::path::Path::new(path).as_os_str().as_bytes())
        .map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// Why `metadata` may not be kept: keys are HTTP token characters, values
/// printable ASCII, within the limits above.
pub fn invalid(metadata: &BTreeMap<String, String>) -> Option<String> {
    if metadata.len() > MAX_PAIRS {
        return Some(format!("more than {MAX_PAIRS} metadata pairs"));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_KEY || !key.chars().all(token) {
            return Some(format!(
                "metadata key {key:?}: 1 to {MAX_KEY} letters, digits or !#$%&'*+-.^_`|~"
            ));
        }
        if value.len() > MAX_VALUE || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Some(format!(
                "metadata value of {key:?}: at most {MAX_VALUE} printable ASCII characters"
            ));
        }
    }
    None
}

/// Keeps `metadata` on `path` (keys lowercased), next to what it has.
pub fn set(path: &str, metadata: &BTreeMap<String, String>) -> std::io::Result<()> {
    let file = c_path(path)?;
    for (key, value) in metadata {
        let name = c_path(&format!("{PREFIX}{}", key.to_ascii_lowercase()))?;
        // SAFETY: both names are NUL-terminated; the value pointer and length
        // describe `value`'s bytes, which outlive the call.
        let result = unsafe {
            libc::lsetxattr(
                file.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The metadata kept on `path` (none where the file system keeps none).
pub fn get(path: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let Ok(file) = c_path(path) else {
        return found;
    };
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: the buffer pointer and length describe `names`, which the call fills.
    let length = unsafe { libc::llistxattr(file.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let Ok(length) = usize::try_from(length) else {
        return found;
    };
    for name in names[..length].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Some(key) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| n.strip_prefix(PREFIX))
        else {
            continue;
        };
        let Ok(c_name) = c_path(&format!("{PREFIX}{key}")) else {
            continue;
        };
        let mut value = vec![0u8; MAX_VALUE];
        // SAFETY: NUL-terminated names; the buffer pointer and length describe `value`.
        let read = unsafe {
            libc::lgetxattr(
                file.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if let Ok(read) = usize::try_from(read) {
            found.insert(
                key.to_string(),
                String::from_utf8_lossy(&value[..read]).into_owned(),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_kept_lowercased_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        std::fs::write(&path, "x").unwrap();
        let path = path.to_string_lossy().into_owned();
        let pairs = BTreeMap::from([
            ("Owner".to_string(), "ada lovelace".to_string()),
            ("v".into(), "2".into()),
        ]);
        assert_eq!(invalid(&pairs), None);
        match set(&path, &pairs) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return, // no user attributes here
            other => other.unwrap(),
        }
        let kept = get(&path);
        assert_eq!(kept["owner"], "ada lovelace");
        assert_eq!(kept["v"], "2");
        assert!(get("/no/such/file").is_empty());
        assert!(invalid(&BTreeMap::from([("bad key".to_string(), "v".to_string())])).is_some());
        assert!(
            invalid(&BTreeMap::from([(
                "k".to_string(),
                "tab\there".to_string()
            )]))
            .is_some()
        );
        assert!(
            invalid(&BTreeMap::from([(
                "k".to_string(),
                "x".repeat(MAX_VALUE + 1)
            )]))
            .is_some()
        );
    }
}
