//! The namespace sandbox: the same guest as the microVM, run in Linux
//! namespaces where hardware virtualisation is missing.
//!
//! - [`executor`]: [`NamespaceExecutor`] and its [`NamespaceConfig`]
//! - [`cgroup`]: the per-sandbox memory and process limits
//! - [`disk`]: the size-limited writable layer
//! - [`network`]: opt-in network access and its egress rules
//! - [`pool`]: [`NamespacePool`], spare sandboxes started ahead of need
//! - [`rootless`]: sandboxes for an ordinary user, and `cellbox setup`
//! - [`zygote`]: the warm template new sandboxes' Python kernels are forked from

pub mod cgroup;
pub mod disk;
pub mod egress;
pub mod executor;
pub mod network;
pub mod pool;
pub mod rootless;
pub mod zygote;

pub use executor::{NamespaceConfig, NamespaceExecutor, VolumeMount};
pub use network::{HostRule, NetworkPolicy, SecretSource};
pub use pool::NamespacePool;
