//! `sandbox.commands()`: shell commands in the sandbox (heavy backend).

use super::Sandbox;
use crate::error::Result;
use crate::guest::{CommandHandle, CommandInfo, CommandOptions, CommandResult, OutputCallback};

/// The commands of a [`Sandbox`].
#[derive(Debug, Clone, Copy)]
pub struct Commands<'a> {
    pub(super) sandbox: &'a Sandbox,
}

impl Commands<'_> {
    /// `options` over the sandbox's defaults (folder, variables, timeout, user).
    fn merged(&self, options: &CommandOptions) -> CommandOptions {
        let mut merged = self.sandbox.command_defaults();
        if options.cwd.is_some() {
            merged.cwd.clone_from(&options.cwd);
        }
        merged.env.extend(options.env.clone());
        if options.user.is_some() {
            merged.user.clone_from(&options.user);
        }
        if options.timeout.is_some() {
            merged.timeout = options.timeout;
        }
        merged.pty = options.pty;
        merged
    }

    /// Runs `cmd` (with `sh -c`) to completion.
    pub async fn run(&self, cmd: &str, options: &CommandOptions) -> Result<CommandResult> {
        self.run_with(cmd, options, &mut |_, _| {}).await
    }

    /// Runs `cmd`, passing its output to `on_output` as it arrives.
    pub async fn run_with(
        &self,
        cmd: &str,
        options: &CommandOptions,
        on_output: &mut OutputCallback<'_>,
    ) -> Result<CommandResult> {
        let client = self.sandbox.moved_client().await?;
        client
            .run_command(cmd, &self.merged(options), on_output)
            .await
    }

    /// Starts `cmd` in the background: wait, kill or feed its stdin through the handle.
    pub async fn start(&self, cmd: &str, options: &CommandOptions) -> Result<CommandHandle> {
        let mut merged = self.merged(options);
        // A background command runs until it ends or is killed, unless told otherwise.
        merged.timeout = options.timeout;
        let client = self.sandbox.moved_client().await?;
        client.start_command(cmd, &merged).await
    }

    /// Kills the running command `pid` and its process group
    /// ([`Error::NotFound`](crate::Error::NotFound) if none runs).
    pub async fn kill(&self, pid: u32) -> Result<()> {
        self.sandbox.moved_client().await?.kill_command(pid).await
    }

    /// Writes `data` to the stdin of the started command `pid`.
    pub async fn send_stdin(&self, pid: u32, data: &[u8]) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .send_stdin(pid, data)
            .await
    }

    /// Resizes the terminal of the started command `pid` (one started with
    /// [`CommandOptions::pty`]).
    pub async fn resize(&self, pid: u32, cols: u16, rows: u16) -> Result<()> {
        self.sandbox
            .moved_client()
            .await?
            .resize_pty(pid, cols, rows)
            .await
    }

    /// Closes the stdin of the started command `pid` (it reads end-of-file).
    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        self.sandbox.moved_client().await?.close_stdin(pid).await
    }

    /// The commands running in the sandbox.
    pub async fn list(&self) -> Result<Vec<CommandInfo>> {
        self.sandbox.moved_client().await?.list_commands().await
    }
}
