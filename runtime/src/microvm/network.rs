//! A microVM's network, when its [`NetworkPolicy`] asks for one: passt
//! (Debian's `passt`, user-mode networking: the guest's connections become
//! the host process's sockets) on one end of a socket pair, the VM's
//! virtio-net card on the other. The VMM checks every frame the guest sends
//! against the policy's [`EgressRules`](crate::namespace::network::EgressRules)
//! before passt sees it (`vmm/src/devices/virtio/net/egress.rs`), so the
//! guest's root cannot get around the rules; the host's loopback is never
//! reachable (passt runs with `--no-map-gw`, the filter drops 127.0.0.0/8).
//!
//! The guest's address, gateway and resolver are fixed (as slirp4netns's are
//! in the namespace sandbox): the kernel configures `eth0` from `ip=`, and
//! guest-init writes `/etc/resolv.conf` (`--nameserver`).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use cellbox_vmm::FrameFilter;

use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::namespace::NetworkPolicy;
use crate::namespace::network::{DNS_FORWARDER, pass_fds};

const GUEST: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";
const GUEST_MAC: [u8; 6] = [0x02, 0xcb, 0x00, 0x00, 0x00, 0x0f];
const GATEWAY_MAC: &str = "02:cb:00:00:00:02";

/// A running passt and the VM's end of its socket.
#[derive(Debug)]
pub struct VmNetwork {
    passt: Child,
    log: tempfile::NamedTempFile,
}

/// What the VM needs to join the network.
#[derive(Debug)]
pub struct NetworkCard {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// The VM's end of passt's socket.
    pub socket: UnixStream,
    /// What the guest's frames must pass.
    pub filter: FrameFilter,
    /// Kernel parameters that configure `eth0`.
    pub kernel_args: Vec<String>,
    /// guest-init's arguments for the resolver.
    pub init_args: Vec<String>,
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: Backend::Vm,
        reason,
    }
}

impl VmNetwork {
    /// Starts passt for a VM with `policy` (names in it resolved now).
    /// Blocking.
    pub fn start(policy: &NetworkPolicy) -> Result<(VmNetwork, NetworkCard)> {
        let rules = policy.resolve()?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| Error::io("making the network socket", e))?;
        let log =
            tempfile::NamedTempFile::new().map_err(|e| Error::io("making passt's log file", e))?;
        let stderr = log
            .reopen()
            .map_err(|e| Error::io("opening passt's log file", e))?;
        let mut command = Command::new("passt");
        command
            // Not --debug: Debian 12's passt (2023-03-09) crashes printing
            // some of its debug messages.
            .args(["--foreground", "--quiet", "--one-off", "--ipv4-only"])
            .args([
                "--no-map-gw",
                "--no-dhcp",
                "--no-ndp",
                "--no-dhcpv6",
                "--no-ra",
            ])
            .args(["--address", GUEST, "--netmask", "24", "--gateway", GATEWAY])
            .args(["--mac-addr", GATEWAY_MAC, "--dns-forward", DNS_FORWARDER])
            .args(["--fd", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !has_default_route() {
            // Nothing but local addresses to reach; passt needs an interface.
            command.args(["--interface", "lo"]);
        }
        pass_fds(&mut command, [(theirs.as_raw_fd(), 3)]);
        let passt = command.spawn().map_err(|e| {
            unavailable(format!(
                "network access in a microVM needs passt (Debian: apt-get install passt): {e}"
            ))
        })?;
        drop(theirs);
        let dns = DNS_FORWARDER.parse::<Ipv4Addr>().ok();
        let card = NetworkCard {
            mac: GUEST_MAC,
            socket: ours,
            filter: FrameFilter::new(rules, dns),
            kernel_args: vec![format!("ip={GUEST}::{GATEWAY}:255.255.255.0::eth0:off")],
            init_args: vec!["--nameserver".into(), DNS_FORWARDER.into()],
        };
        Ok((VmNetwork { passt, log }, card))
    }

    /// Fails, with passt's words, if passt has exited (call it once the
    /// VM is up: passt refuses bad setups at start).
    pub fn check(&mut self) -> Result<()> {
        match self.passt.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let said = std::fs::read_to_string(self.log.path()).unwrap_or_default();
                let said: Vec<&str> = said
                    .lines()
                    .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
                    .collect();
                Err(unavailable(format!(
                    "passt (the VM's network) stopped ({status}): {}",
                    said.join("; ")
                )))
            }
            Err(e) => Err(Error::io("checking on passt", e)),
        }
    }
}

impl Drop for VmNetwork {
    fn drop(&mut self) {
        let _ = self.passt.kill();
        let _ = self.passt.wait();
    }
}

/// Whether the host has an IPv4 default route (`/proc/net/route`).
fn has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|table| {
        table
            .lines()
            .skip(1)
            .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
    })
}
