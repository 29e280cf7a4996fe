//! Helpers the test-guest tests share: the guest ELF, a base disk image,
//! waiting for the end, the guest's lines and a vsock echo.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cellbox_vmm::{ExitReason, Vm, test_guest};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn guest() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| test_guest::build(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap())
}

/// A 1 MiB base image whose first sector starts with a marker.
pub fn base_image(dir: &Path) -> PathBuf {
    let path = dir.join("base.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"CELLBOX BASE IMG");
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn finished(vm: &Vm) -> ExitReason {
    let reason = vm.wait(WAIT);
    reason.unwrap_or_else(|| panic!("the VM did not stop; console:\n{}", vm.console().text()))
}

pub fn lines(vm: &Vm) -> Vec<String> {
    vm.console()
        .text()
        .lines()
        .filter(|l| l.starts_with("tg: "))
        .map(str::to_string)
        .collect()
}

pub fn echo(stream: &mut UnixStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.read_exact(&mut back).unwrap();
    back
}
