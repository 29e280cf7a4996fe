//! `sandbox.open_port(port)`: a connection to a server started in the
//! sandbox (heavy backend), through the guest's own channel: it needs no
//! network card, and nothing else on the host can reach the port.

use tokio::io::DuplexStream;

use super::Sandbox;
use crate::error::Result;

impl Sandbox {
    /// Connects to `port` on the sandbox's loopback, where a server started
    /// in it listens ([`crate::Error::NotFound`] if none does). The stream
    /// reads what the server sends and writes to it; dropping it closes the
    /// connection.
    ///
    /// ```no_run
    /// # async fn f(sandbox: cellbox::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// let options = cellbox::CommandOptions::default();
    /// sandbox.commands().start("python3 -m http.server 8000", &options).await?;
    /// let mut server = sandbox.open_port(8000).await?;
    /// server.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    /// let mut page = String::new();
    /// server.read_to_string(&mut page).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_port(&self, port: u16) -> Result<DuplexStream> {
        self.moved_client().await?.open_port(port).await
    }
}
