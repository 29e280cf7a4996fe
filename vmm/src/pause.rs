//! Pausing a running VM: its vCPU threads park outside the guest until
//! resumed. Guest memory, devices and everything the guest had running stay
//! as they were; a paused VM uses no CPU.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::devices::bus::lock;

/// Whether a pause is asked for, and how many vCPUs have parked for it.
#[derive(Debug, Default)]
pub(crate) struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    parked: usize,
}

impl PauseGate {
    /// Asks the vCPUs to park (`true`) or to go on (`false`).
    pub(crate) fn request(&self, paused: bool) {
        lock(&self.state).paused = paused;
        self.changed.notify_all();
    }

    /// Whether a pause is asked for.
    pub(crate) fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Wakes parked vCPUs so that they see the VM stopping.
    pub(crate) fn wake(&self) {
        drop(lock(&self.state));
        self.changed.notify_all();
    }

    /// A vCPU thread, between two entries into the guest: parks while a
    /// pause is asked for and the VM is not `stopping`.
    pub(crate) fn park_while_paused(&self, stopping: impl Fn() -> bool) {
        let mut state = lock(&self.state);
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !stopping() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for `count` vCPUs to have parked.
    pub(crate) fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.parked < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[test]
    fn workers_park_while_paused_and_go_on_after() {
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (gate, stop, work) = (gate.clone(), stop.clone(), work.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        gate.park_while_paused(|| stop.load(Ordering::SeqCst));
                        work.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        gate.request(true);
        assert!(gate.wait_parked(2, Duration::from_secs(5)));
        let frozen = work.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(work.load(Ordering::SeqCst), frozen, "no work while paused");
        gate.request(false);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            work.load(Ordering::SeqCst) > frozen,
            "work goes on after resume"
        );
        gate.request(true);
        assert!(gate.wait_parked(2, Duration::from_secs(5)));
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(!gate.wait_parked(1, Duration::from_millis(10)), "all left");
    }
}
