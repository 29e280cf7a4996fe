//! What the host does to a running guest from outside it: freeze and thaw
//! it (pause and resume) and read what it uses (metrics). Each heavy backend
//! has its own way: the namespace sandbox its control groups, the microVM
//! its vCPU threads.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;

/// What a guest uses, as its backend measures it from outside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPUs it may use.
    pub cpus: u32,
    /// CPU time used since it started.
    pub cpu_time: Duration,
    /// Memory in use, page cache included (bytes).
    pub memory_used: u64,
    /// Of that, page cache (bytes).
    pub memory_cache: u64,
    /// Its memory limit (bytes).
    pub memory_total: u64,
    /// Its disk in use (bytes).
    pub disk_used: u64,
    /// Its disk's size (bytes).
    pub disk_total: u64,
}

/// Freezes, thaws and measures one running guest.
pub trait GuestControl: Send + Sync + std::fmt::Debug {
    /// Stops everything in the guest where it is; it uses no CPU until
    /// [`GuestControl::resume`]. Nothing is lost.
    fn pause(&self) -> Result<()>;
    /// Lets the guest go on from where [`GuestControl::pause`] stopped it.
    fn resume(&self) -> Result<()>;
    /// What it uses now.
    fn usage(&self) -> Result<Usage>;
    /// Replaces the running guest's network rules (blocking: it may look
    /// names up and run `nft`). Only the namespace backend can, and only
    /// for a sandbox started with network access.
    fn update_network(&self, policy: &crate::NetworkPolicy) -> Result<()> {
        let _ = policy;
        Err(crate::Error::InvalidArgument(
            "changing a running sandbox's network rules needs the namespace backend".into(),
        ))
    }
}

/// Where a session's heavy guest puts its [`GuestControl`] once started,
/// for others (the [`crate::Sandbox`]) to reach without the session.
#[derive(Debug, Clone, Default)]
pub struct ControlSlot(Arc<std::sync::Mutex<Option<Arc<dyn GuestControl>>>>);

impl ControlSlot {
    /// Fills the slot.
    pub fn set(&self, control: Arc<dyn GuestControl>) {
        *crate::lock(&self.0) = Some(control);
    }

    /// The control, once the heavy guest has started.
    pub fn get(&self) -> Option<Arc<dyn GuestControl>> {
        crate::lock(&self.0).clone()
    }
}
