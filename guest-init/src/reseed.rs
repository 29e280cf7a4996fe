//! A microVM restored from a snapshot starts with the random state of every
//! other VM restored from it: the kernel's CRNG and each Python kernel's
//! `random`/numpy state. The host sends fresh entropy in `Hello`; [`mix`]
//! puts it into the guest kernel's pool, reseeds its CRNG at once, and
//! rewrites the generation file that tells Python kernels to reseed before
//! their next cell (`cellbox_kernel.py`).

use std::ffi::CStr;

/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// The file Python kernels watch; only root can write its folder.
const GENERATION_DIR: &CStr = c"/run/cellbox";
const GENERATION_FILE: &CStr = c"/run/cellbox/generation";
/// Most entropy bytes taken from one `Hello`.
pub const MAX_ENTROPY: usize = 512;

/// Mixes `entropy` into the guest kernel's pool and reseeds its CRNG, then
/// writes a new generation. guest-init's server runs with an unprivileged
/// effective uid (see `confine::shield_server`), so a short-lived child
/// becomes root (its saved uid) to do it.
pub fn mix(entropy: &[u8]) -> Result<(), String> {
    let entropy = &entropy[..entropy.len().min(MAX_ENTROPY)];
    // SAFETY: the child only makes async-signal-safe calls (setresuid, open,
    // write, ioctl, getrandom, mkdir, close, _exit) on memory that fork copied.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: see above; the child never returns.
            let code = unsafe { child(entropy) };
            // SAFETY: leaving the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for the child made above.
            if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
            }
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(()),
                (_, step) => Err(format!("reseeding the guest failed at step {step}")),
            }
        }
    }
}

/// The child's work; returns the failed step (0: done).
///
/// # Safety
/// Only in a freshly forked child of a multithreaded process.
unsafe fn child(entropy: &[u8]) -> i32 {
    // SAFETY: plain system calls on valid pointers and on descriptors this
    // function opened (the whole body).
    unsafe {
        if libc::setresuid(0, 0, 0) != 0 {
            return 1;
        }
        let fd = libc::open(c"/dev/urandom".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 2;
        }
        let written = libc::write(fd, entropy.as_ptr().cast(), entropy.len());
        let reseeded = libc::ioctl(fd, RNDRESEEDCRNG);
        libc::close(fd);
        if written != entropy.len() as isize {
            return 3;
        }
        if reseeded != 0 {
            return 4;
        }
        let mut generation = [0u8; 16];
        if libc::getrandom(generation.as_mut_ptr().cast(), generation.len(), 0) != 16 {
            return 5;
        }
        libc::mkdir(GENERATION_DIR.as_ptr(), 0o755);
        let fd = libc::open(
            GENERATION_FILE.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o644,
        );
        if fd < 0 {
            return 6;
        }
        let written = libc::write(fd, generation.as_ptr().cast(), generation.len());
        libc::close(fd);
        if written != 16 {
            return 7;
        }
        0
    }
}

/// Parses the hex entropy of a `Hello`.
pub fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * MAX_ENTROPY {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_hex_and_bounded() {
        assert_eq!(parse_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_hex("0"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex("é0"), None);
        assert_eq!(parse_hex(&"ab".repeat(MAX_ENTROPY + 1)), None);
    }
}
