//! One host↔guest stream: its host-side socket, its state and both
//! directions' flow-control credit.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;

/// Bytes of guest data the host side buffers (our `buf_alloc`).
pub const HOST_BUF_ALLOC: u32 = 256 << 10;

/// Where a connection is in its life.
#[derive(Debug)]
pub enum State {
    /// REQUEST sent; waiting for the guest's RESPONSE or RST.
    Connecting(Option<Sender<io::Result<()>>>),
    /// Data flows.
    Established,
}

/// A connection from the host side to a guest port.
#[derive(Debug)]
pub struct Connection {
    /// The host end (the caller or a Unix-socket client holds the other end).
    pub stream: UnixStream,
    /// The guest port.
    pub peer_port: u32,
    /// Where the connection is.
    pub state: State,
    /// Written to the host end first, once the guest accepts (`OK <port>\n`).
    pub greeting: Vec<u8>,
    /// Guest data not yet written to the host end.
    pub to_host: VecDeque<u8>,
    /// The host end may have data to read (edge-triggered hint).
    pub readable: bool,
    /// The guest will send no more; close once `to_host` is flushed.
    pub peer_done: bool,
    /// The guest's receive buffer size and consumed count.
    pub peer_buf_alloc: u32,
    /// The guest's consumed count.
    pub peer_fwd_cnt: u32,
    /// Bytes we sent to the guest.
    pub rx_cnt: u32,
    /// Bytes of guest data we delivered to the host end.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_told: u32,
}

impl Connection {
    /// A new connection to `peer_port` over `stream` (made non-blocking).
    pub fn new(
        stream: UnixStream,
        peer_port: u32,
        waiter: Option<Sender<io::Result<()>>>,
        greeting: Vec<u8>,
    ) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            peer_port,
            state: State::Connecting(waiter),
            greeting,
            to_host: VecDeque::new(),
            readable: false,
            peer_done: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
        })
    }

    /// Bytes the guest can still receive from us.
    pub fn credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted: greet the host end and start reading it.
    pub fn establish(&mut self) {
        if let State::Connecting(waiter) = &mut self.state
            && let Some(waiter) = waiter.take()
        {
            let _ = waiter.send(Ok(()));
        }
        self.state = State::Established;
        self.readable = true;
        self.flush();
    }

    /// Tells a waiting `connect` why it failed.
    pub fn fail(&mut self, error: io::ErrorKind, what: &str) {
        if let State::Connecting(Some(waiter)) = &mut self.state {
            let _ = waiter.send(Err(io::Error::new(error, what.to_string())));
        }
    }

    /// Queues guest data for the host end; `false` if the guest overran our credit.
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > HOST_BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend(data);
        self.flush();
        true
    }

    /// Writes buffered guest data to the host end until it would block.
    pub fn flush(&mut self) {
        if !matches!(self.state, State::Established) {
            return;
        }
        while !self.greeting.is_empty() {
            match self.stream.write(&self.greeting) {
                Ok(n) if n > 0 => drop(self.greeting.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Whether the guest should hear about our consumed count now.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= HOST_BUF_ALLOC / 4
    }

    /// Reads up to `max` bytes from the host end: `Ok(None)` if nothing is
    /// there now, `Ok(Some(empty))` at end of stream.
    pub fn read_from_host(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; max];
        loop {
            match self.stream.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
