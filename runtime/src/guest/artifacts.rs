//! The guest's artefacts, built on first use and cached by their inputs:
//! the Debian root file system tree, and the guest layer (`/sbin/init` =
//! `guest-init`, plus the kernel driver) laid over it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::builder;
use crate::cache;
use crate::error::{Error, Result};
use crate::progress::Progress;

const ROOTFS_SCRIPT: &str = include_str!("../../../guest-init/rootfs/build.sh");
const ROOTFS_PYTHON_PACKAGES: &str = include_str!("../../../guest-init/rootfs/python-packages.txt");
const EXT4_SCRIPT: &str = include_str!("../../../guest-init/rootfs/make-ext4.sh");

/// A prebuilt guest layer to use instead of building `guest-init` from its
/// sources (the Python wheel ships one, made with [`build_layer`]).
pub const PREBUILT_LAYER_ENV: &str = "CELLBOX_GUEST_LAYER";

/// Where root shares the guest artefacts it built with the machine's other
/// users (`cellbox setup --user NAME`): read-only for them, trusted because
/// root owns it.
pub const SHARED_CACHE_DIR: &str = "/var/cache/cellbox";

/// Names another folder than [`SHARED_CACHE_DIR`]; empty: none (a user then
/// builds the guest's root file system themselves, its files keeping their
/// owners).
pub const SHARED_CACHE_DIR_ENV: &str = "CELLBOX_SHARED_CACHE_DIR";

/// [`SHARED_CACHE_DIR`], or what [`SHARED_CACHE_DIR_ENV`] names.
pub fn shared_cache_dir() -> Option<PathBuf> {
    match std::env::var_os(SHARED_CACHE_DIR_ENV) {
        Some(dir) if dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(PathBuf::from(SHARED_CACHE_DIR)),
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For a process without root whose own cache lacks `key` (ready when
/// `ready` exists in it): the copy root shared in [`SHARED_CACHE_DIR`].
pub(crate) fn shared(cache_root: &Path, key: &Path, ready: &str) -> Option<PathBuf> {
    if running_as_root() || cache_root.join(key).join(ready).exists() {
        return None;
    }
    let dir = shared_cache_dir()?.join(key);
    (dir.join(ready).exists() && cache::check_trusted(&dir).is_ok()).then_some(dir)
}

/// Built guest artefacts.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// The unpacked Debian root file system (never written to).
    pub tree: PathBuf,
    /// A small tree with `sbin/init` and `usr/lib/cellbox/`, laid over `tree`.
    pub layer: PathBuf,
    /// Where the ext4 image of `tree` + `layer` is kept once made.
    image_dir: PathBuf,
}

impl GuestArtifacts {
    /// Returns the cached artefacts, building what is missing (the root file
    /// system takes minutes the first time; progress goes to `progress`). Blocking.
    ///
    /// Without root, the root file system (and, with no sources at hand, the
    /// guest layer) comes from [`SHARED_CACHE_DIR`] when the own cache lacks
    /// it: `cellbox setup --user NAME`, run once as root, puts them there.
    /// Where there is none, the user builds it (`build.sh` in a user
    /// namespace of their subordinate ids).
    pub fn ensure(cache_root: &Path, progress: &Progress) -> Result<GuestArtifacts> {
        let rootfs_files = [
            ("build.sh", ROOTFS_SCRIPT),
            ("python-packages.txt", ROOTFS_PYTHON_PACKAGES),
        ];
        const ROOTFS_READY: &str = "tree/usr/bin/python3";
        let rootfs_key = Path::new("rootfs").join(builder::script_key(&rootfs_files));
        let rootfs = match shared(cache_root, &rootfs_key, ROOTFS_READY) {
            Some(shared) => shared,
            None => builder::script_build(
                cache_root,
                "rootfs",
                ROOTFS_READY,
                &rootfs_files,
                "building the guest root file system (guest-init/rootfs/build.sh)",
                progress,
            )?,
        };
        let layer = match std::env::var_os(PREBUILT_LAYER_ENV) {
            Some(prebuilt) => install_prebuilt_layer(cache_root, Path::new(&prebuilt))?,
            None => {
                let sources = guest_init_sources()?;
                let layer_key = Path::new("guest-layer").join(cache::input_key(
                    sources
                        .iter()
                        .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
                ));
                match shared(cache_root, &layer_key, INIT) {
                    Some(shared) => shared,
                    None => builder::ensure_built(&cache_root.join(&layer_key), INIT, |dir| {
                        build_layer(dir, &cache_root.join("guest-init-target"), progress)
                    })?,
                }
            }
        };
        // Keyed by the inputs' own keys (their folders' names), not where
        // they are: root's image is a user's too, whoever holds the tree.
        let name = |dir: &Path| {
            dir.file_name()
                .unwrap_or_default()
                .as_encoded_bytes()
                .to_vec()
        };
        let image_key = Path::new("image").join(cache::input_key([
            ("rootfs", name(&rootfs).as_slice()),
            ("layer", name(&layer).as_slice()),
            ("make-ext4.sh", EXT4_SCRIPT.as_bytes()),
        ]));
        let image_dir =
            shared(cache_root, &image_key, IMAGE).unwrap_or_else(|| cache_root.join(&image_key));
        Ok(GuestArtifacts {
            tree: rootfs.join("tree"),
            layer,
            image_dir,
        })
    }

    /// The root file system as an ext4 image (the microVM's disk), made on
    /// first use from `tree` and `layer` without loop devices. Blocking.
    ///
    /// Without root the image comes from [`SHARED_CACHE_DIR`] (`cellbox
    /// setup --user NAME` puts it there): making it reads every file of the
    /// tree, `/etc/shadow` among them.
    pub fn ext4_image(&self, progress: &Progress) -> Result<PathBuf> {
        let dir = builder::ensure_built(&self.image_dir, IMAGE, |dir| {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let partial = dir.join("rootfs.ext4.partial");
            builder::run_embedded_script(
                &[("make-ext4.sh", EXT4_SCRIPT)],
                &[&self.tree, &self.layer, &partial],
                progress,
                "making the ext4 image (guest-init/rootfs/make-ext4.sh)",
            )
            .map_err(|e| match running_as_root() {
                true => e,
                false => Error::Artifact {
                    what: "the guest's ext4 image".into(),
                    reason: format!(
                        "{e}; making it reads files only root may read: run `sudo cellbox \
                         setup --user {}` once, which shares root's image",
                        crate::namespace::rootless::user_name()
                    ),
                },
            })?;
            std::fs::rename(&partial, dir.join(IMAGE))
                .map_err(|e| Error::io(format!("finishing {}", dir.display()), e))
        })?;
        Ok(dir.join(IMAGE))
    }

    /// The folder that holds (or will hold) the ext4 image.
    pub(crate) fn image_dir(&self) -> &Path {
        &self.image_dir
    }
}

/// The kernel drivers (`guest-init/kernel/`), installed in `/usr/lib/cellbox`.
const KERNEL_DRIVERS: [&str; 9] = [
    "cellbox_kernel.py",
    "cellbox_zygote.py",
    "cellbox_driver.py",
    "cellbox_results.py",
    "cellbox_charts.py",
    "cellbox_kernel.js",
    "cellbox_kernel_bash.py",
    "cellbox_kernel_jupyter.py",
    "CellboxKernel.java",
];

/// The files `guest-init` and its kernel drivers are built from.
fn guest_init_sources() -> Result<Vec<(String, Vec<u8>)>> {
    let root = Path::new(cellbox_guest_init::SOURCE_DIR);
    if !root.join("Cargo.toml").exists() {
        return Err(Error::Artifact {
            what: "building guest-init".into(),
            reason: format!(
                "its sources are not at {} (cellbox was moved after it was built); \
                 set {PREBUILT_LAYER_ENV} to a prebuilt guest layer (the Python wheel ships one)",
                root.display()
            ),
        });
    }
    let mut files = vec![root.join("Cargo.toml")];
    files.extend(
        KERNEL_DRIVERS
            .iter()
            .map(|name| root.join("kernel").join(name)),
    );
    let src = root.join("src");
    let entries =
        std::fs::read_dir(&src).map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
    files.extend(entries.flatten().map(|e| e.path()));
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            Ok((name, bytes))
        })
        .collect()
}

/// The ext4 image's name in its folder.
const IMAGE: &str = "rootfs.ext4";

/// Where `guest-init` goes in a guest layer.
const INIT: &str = "sbin/init";

/// A guest layer's files by their path inside it: `guest-init`, then the
/// kernel drivers in `usr/lib/cellbox/` (in [`KERNEL_DRIVERS`]' order).
fn layer_paths() -> Vec<String> {
    std::iter::once(INIT.to_string())
        .chain(
            KERNEL_DRIVERS
                .iter()
                .map(|driver| format!("usr/lib/cellbox/{driver}")),
        )
        .collect()
}

/// Lays out the new guest layer `dir`, copying `sources` to
/// [`layer_paths`] in order, through a staging folder so that `dir`
/// appears whole or not at all.
fn lay_out_layer(dir: &Path, sources: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    let copy = || -> std::io::Result<()> {
        for (path, source) in layer_paths().iter().zip(sources) {
            let target = staging.join(path);
            std::fs::create_dir_all(target.parent().unwrap_or(&staging))?;
            std::fs::copy(source, &target)?;
            let mode = if path == INIT { 0o755 } else { 0o644 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::rename(&staging, dir)
    };
    copy().map_err(|e| {
        Error::io(
            format!("laying out the guest layer in {}", dir.display()),
            e,
        )
    })
}

/// Copies the prebuilt guest layer `source` into the cache, which cellbox
/// trusts, so that the cache holds what runs as the guest. Only the layer's
/// own files are taken (not, say, the `__pycache__` that pip leaves beside
/// the drivers), and only from where no other user could have changed them
/// (the guest's init runs as root on the host). The copy is found by each
/// file's size and modification time, so that a sandbox's start does not
/// read the 2.6 MB binary again.
fn install_prebuilt_layer(cache_root: &Path, source: &Path) -> Result<PathBuf> {
    let sources: Vec<PathBuf> = layer_paths().iter().map(|p| source.join(p)).collect();
    let mut stamps = Vec::with_capacity(sources.len());
    for file in &sources {
        cache::check_trusted(file).map_err(|e| Error::Artifact {
            what: format!("the prebuilt guest layer {}", source.display()),
            reason: format!("{e}; or unset {PREBUILT_LAYER_ENV}"),
        })?;
        let meta = std::fs::metadata(file).map_err(|e| Error::Artifact {
            what: format!("the prebuilt guest layer {}", source.display()),
            reason: format!(
                "{}: {e}; unset {PREBUILT_LAYER_ENV} or rebuild it",
                file.display()
            ),
        })?;
        stamps.push(format!("{} {:?}", meta.len(), meta.modified().ok()));
    }
    let key = cache::input_key(
        layer_paths()
            .iter()
            .zip(&stamps)
            .map(|(path, stamp)| (path.as_str(), stamp.as_bytes())),
    );
    builder::ensure_built(
        &cache_root
            .join("guest-layer")
            .join(format!("prebuilt-{key}")),
        INIT,
        |dir| lay_out_layer(dir, &sources),
    )
}

/// Builds `guest-init` (static, so it runs in any root file system) with
/// cargo and lays it out with the kernel drivers in the new folder `dir`
/// (what [`PREBUILT_LAYER_ENV`] may name). Blocking.
pub fn build_layer(dir: &Path, target_dir: &Path, progress: &Progress) -> Result<()> {
    let source = Path::new(cellbox_guest_init::SOURCE_DIR);
    progress.report("building guest-init (first run only)");
    // An explicit --target keeps the static-linking flag off build scripts and proc macros.
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args([
            "build",
            "--release",
            "--bin",
            "guest-init",
            "--target",
            &target,
            "--manifest-path",
        ])
        .arg(source.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    builder::run_logged(cargo, progress, "building guest-init with cargo")?;

    let built = std::iter::once(target_dir.join(&target).join("release/guest-init"));
    let drivers = KERNEL_DRIVERS
        .iter()
        .map(|driver| source.join("kernel").join(driver));
    lay_out_layer(dir, &built.chain(drivers).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_prebuilt_layer_is_copied_once_and_only_its_own_files() {
        let (source, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for path in layer_paths() {
            let file = source.path().join(&path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, path.as_bytes()).unwrap();
        }
        // What pip leaves beside the drivers is not the layer's.
        let stray = source.path().join("usr/lib/cellbox/__pycache__");
        std::fs::create_dir(&stray).unwrap();
        std::fs::write(stray.join("cellbox_kernel.cpython-311.pyc"), b"pyc").unwrap();

        let first = install_prebuilt_layer(cache.path(), source.path()).unwrap();
        assert_eq!(
            first,
            install_prebuilt_layer(cache.path(), source.path()).unwrap()
        );
        assert!(!first.join("usr/lib/cellbox/__pycache__").exists());
        let init = std::fs::metadata(first.join(INIT)).unwrap();
        assert_eq!(init.permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read(first.join(INIT)).unwrap(), INIT.as_bytes());

        // A file another user may change is not taken: init runs as root.
        let driver = source.path().join(&layer_paths()[1]);
        std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(&driver, b"changed by someone else").unwrap();
        let untrusted = install_prebuilt_layer(cache.path(), source.path()).unwrap_err();
        assert!(
            untrusted.to_string().contains("another user"),
            "{untrusted}"
        );

        std::fs::remove_file(source.path().join(INIT)).unwrap();
        let missing = install_prebuilt_layer(cache.path(), source.path()).unwrap_err();
        assert!(
            missing.to_string().contains(PREBUILT_LAYER_ENV),
            "{missing}"
        );
    }
}
