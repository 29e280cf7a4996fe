//! What the heavy backends share: the guest's artefacts (root file system,
//! guest layer, ext4 image, kernel) and the host side of the `guest-init`
//! protocol (the message types live in `cellbox-guest-init`).
//!
//! A [`GuestClient`] (from [`GuestExecutor::guest`]) reaches the guest's
//! files ([`files`]), shell commands ([`commands`]) and contexts
//! ([`contexts`]) and servers listening in it ([`ports`]).

pub mod artifacts;
pub mod client;
pub mod commands;
pub mod contexts;
pub mod control;
pub mod files;
pub mod kernel;
pub mod ports;
pub mod session;
pub mod watch;

pub use artifacts::GuestArtifacts;
pub use cellbox_guest_init::protocol::{FileStat, PtySize};
pub use client::{GuestClient, Replies};
pub use commands::{
    CommandHandle, CommandInfo, CommandOptions, CommandResult, OutputCallback, Stream,
};
pub use contexts::{ContextInfo, Language};
pub use control::{ControlSlot, GuestControl, Usage};
pub use kernel::GuestKernel;
pub use session::{GuestBackend, GuestExecutor, GuestSession};
pub use watch::{FolderWatch, FsEvent, FsEventKind};
