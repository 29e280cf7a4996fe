//! What the heavy backends share: the guest's artefacts and the host side of
//! the `guest-init` protocol (the message types live in `cellbox-guest-init`).

pub mod artifacts;
pub mod client;

pub use artifacts::GuestArtifacts;
pub use client::GuestClient;
