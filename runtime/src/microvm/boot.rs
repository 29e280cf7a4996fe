//! A microVM's boot milestones on the host's clock, so a slow boot can be
//! read: when the VM started, when the guest kernel, `guest-init` and its
//! listening socket came up, and when the host was connected.

use std::time::Duration;

use cellbox_guest_init::protocol::BootClock;

/// Milestones of one boot, each measured from the call that started the VM
/// (artefact builds excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimeline {
    /// The VM was set up and its vCPUs entered the guest.
    pub vm_started: Duration,
    /// The guest kernel's clock started (early in the kernel's setup).
    pub kernel_started: Duration,
    /// `guest-init` started as PID 1.
    pub init_started: Duration,
    /// `guest-init` listened on vsock.
    pub listening: Duration,
    /// The host was connected and `guest-init` had answered `Hello`.
    pub connected: Duration,
}

impl BootTimeline {
    /// Places the guest's clock readings on the host's: the guest answered
    /// `Hello` (at `guest.hello_ms` of its clock) just before `connected`.
    pub fn new(vm_started: Duration, connected: Duration, guest: BootClock) -> BootTimeline {
        let kernel_started = connected
            .saturating_sub(Duration::from_millis(guest.hello_ms))
            .max(vm_started);
        let at = |ms: u64| (kernel_started + Duration::from_millis(ms)).min(connected);
        BootTimeline {
            vm_started,
            kernel_started,
            init_started: at(guest.init_started_ms),
            listening: at(guest.listening_ms),
            connected,
        }
    }
}

impl std::fmt::Display for BootTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "VM started {:.1} ms, kernel {:.1} ms, init {:.1} ms, guest-init listening {:.1} ms, connected {:.1} ms",
            ms(self.vm_started),
            ms(self.kernel_started),
            ms(self.init_started),
            ms(self.listening),
            ms(self.connected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_readings_land_between_vm_start_and_connection() {
        let guest = BootClock {
            init_started_ms: 300,
            listening_ms: 350,
            hello_ms: 400,
        };
        let timeline =
            BootTimeline::new(Duration::from_millis(2), Duration::from_millis(450), guest);
        assert_eq!(timeline.kernel_started, Duration::from_millis(50));
        assert_eq!(timeline.init_started, Duration::from_millis(350));
        assert_eq!(timeline.listening, Duration::from_millis(400));
        assert!(timeline.to_string().contains("init 350.0 ms"), "{timeline}");

        // A guest clock running ahead of the host's never puts the kernel
        // before the VM or a milestone after the connection.
        let skewed = BootTimeline::new(
            Duration::from_millis(2),
            Duration::from_millis(100),
            BootClock {
                init_started_ms: 150,
                listening_ms: 160,
                hello_ms: 170,
            },
        );
        assert_eq!(skewed.kernel_started, Duration::from_millis(2));
        assert_eq!(skewed.listening, Duration::from_millis(100));

        // Whatever a hostile guest reports, the host neither panics nor
        // places a milestone outside [VM started, connected].
        for ms in [0, 1, u64::MAX / 2, u64::MAX] {
            let hostile = BootTimeline::new(
                Duration::from_millis(2),
                Duration::from_millis(100),
                BootClock {
                    init_started_ms: ms,
                    listening_ms: u64::MAX - ms,
                    hello_ms: ms,
                },
            );
            for at in [
                hostile.kernel_started,
                hostile.init_started,
                hostile.listening,
            ] {
                assert!(at >= Duration::from_millis(2) && at <= Duration::from_millis(100));
            }
        }
    }
}
