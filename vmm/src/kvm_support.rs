//! Can this host run a Linux guest under KVM? Answers fast, never hangs.

use std::path::Path;

/// Why KVM cannot run the Linux guest here, or `None` if it can.
///
/// PVM (`kvm_pvm`, a paravirtual nested hypervisor) runs small freestanding
/// guests but instruction-emulates a stock kernel (minutes to boot, and user
/// space faults on its first `syscall`), so it counts as unusable.
pub fn linux_guest_blocker() -> Option<String> {
    blocker_in(Path::new("/"))
}

/// [`linux_guest_blocker`] with `/dev` and `/sys` under `root` (for tests).
pub fn blocker_in(root: &Path) -> Option<String> {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return Some(
            "/dev/kvm does not exist (no KVM module, or not passed into this container)".into(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        return Some(format!("/dev/kvm cannot be opened: {e}"));
    }
    if root.join("sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is backed by PVM (kvm_pvm), a paravirtual nested hypervisor without \
             hardware virtualisation: a Linux guest kernel would be instruction-emulated"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_and_pvm_are_named() {
        let root = tempfile::tempdir().unwrap();
        assert!(blocker_in(root.path()).unwrap().contains("does not exist"));
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        assert_eq!(blocker_in(root.path()), None);
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        assert!(blocker_in(root.path()).unwrap().contains("PVM"));
    }
}
