//! What the heavy backends share: the guest's artefacts (root file system,
//! guest layer, ext4 image, kernel) and the host side of the `guest-init`
//! protocol (the message types live in `cellbox-guest-init`).

pub mod artifacts;
pub mod client;
pub mod files;
pub mod kernel;
pub mod session;

pub use artifacts::GuestArtifacts;
pub use client::GuestClient;
pub use kernel::GuestKernel;
pub use session::{GuestExecutor, GuestSession};
