//! The connection multiplexer: routes guest packets to host-side streams and
//! host-side data to the guest, enforcing credit in both directions.
//!
//! Host-initiated connections only: the runtime (or a Unix-socket client)
//! connects to a guest port; a guest connecting to the host is refused.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;

use super::connection::{Connection, HOST_BUF_ALLOC, State};
use super::header::{HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

/// First host port handed out (high, so it never looks like a service port).
pub(crate) const FIRST_HOST_PORT: u32 = 1 << 30;

/// Control packets (requests, resets, credit updates) waiting for RX buffers
/// at most. Past it the device takes no more guest packets (TX back-pressure)
/// and resets owed to packets for unknown connections are dropped, so a guest
/// that sends without posting RX buffers cannot grow the queue.
pub(crate) const MAX_CONTROL: usize = 256;

/// A request to open a stream to a guest port.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The host end of the new stream.
    pub stream: UnixStream,
    /// The guest port.
    pub port: u32,
    /// Told `Ok` once the guest accepts, or why it did not.
    pub waiter: Option<Sender<io::Result<()>>>,
    /// Write `OK <host port>\n` to the stream once the guest accepts.
    pub announce: bool,
}

/// All connections of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    connections: BTreeMap<u32, Connection>,
    control: VecDeque<Header>,
    next_port: u32,
    last_served: u32,
    new_streams: Vec<(RawFd, u32)>,
    closed: Vec<UnixStream>,
}

impl Muxer {
    /// A muxer for the guest with context id `guest_cid`.
    pub fn new(guest_cid: u64) -> Muxer {
        Muxer {
            guest_cid,
            connections: BTreeMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            last_served: 0,
            new_streams: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Whether the control queue is full: guest packets must wait.
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL
    }

    /// Starts a connection: queues a REQUEST to the guest.
    pub fn connect(&mut self, request: ConnectRequest) {
        let local = self.allocate_port();
        let greeting = if request.announce {
            format!("OK {local}\n").into_bytes()
        } else {
            Vec::new()
        };
        let fd = request.stream.as_raw_fd();
        match Connection::new(request.stream, request.port, request.waiter, greeting) {
            Ok(conn) => {
                self.control
                    .push_back(self.header(local, &conn, op::REQUEST, 0));
                self.connections.insert(local, conn);
                self.new_streams.push((fd, local));
            }
            Err(e) => tracing::warn!("cannot set up a vsock stream: {e}"),
        }
    }

    fn allocate_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.connections.contains_key(&port) {
                return port;
            }
        }
    }

    fn header(&self, local: u32, conn: &Connection, op: u16, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: conn.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: HOST_BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt,
        }
    }

    fn reset_reply(&self, to: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }

    /// Handles one packet the guest sent.
    pub fn from_guest(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            tracing::debug!(?hdr, "vsock packet with wrong addresses dropped");
            return;
        }
        let known = self
            .connections
            .get(&hdr.dst_port)
            .is_some_and(|c| c.peer_port == hdr.src_port);
        if hdr.type_ != TYPE_STREAM || !known {
            if hdr.op != op::RST && !self.control_full() {
                self.control.push_back(self.reset_reply(hdr));
            }
            return;
        }
        let local = hdr.dst_port;
        let conn = self.connections.get_mut(&local).expect("checked above");
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        let established = matches!(conn.state, State::Established);
        match hdr.op {
            op::RESPONSE if !established => conn.establish(),
            op::RW if established => {
                let payload = &data[..data.len().min(hdr.len as usize)];
                if !conn.push_to_host(payload) {
                    tracing::warn!(local, "guest overran its vsock credit; connection reset");
                    self.reset(local);
                    return;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                let update = self.header(local, &self.connections[&local], op::CREDIT_UPDATE, 0);
                self.control.push_back(update);
            }
            op::SHUTDOWN if hdr.flags & SHUTDOWN_SEND != 0 => {
                conn.peer_done = true;
                self.close_if_done(local);
            }
            op::SHUTDOWN => {}
            op::RST => {
                conn.fail(
                    io::ErrorKind::ConnectionRefused,
                    "the guest refused the vsock connection",
                );
                self.close(local);
            }
            _ => self.reset(local),
        }
        self.queue_credit_update(local);
    }

    /// The host end of connection `local` became readable and/or writable.
    pub fn host_event(&mut self, local: u32, readable: bool, writable: bool) {
        if let Some(conn) = self.connections.get_mut(&local) {
            conn.readable |= readable;
            if writable {
                conn.flush();
            }
            self.close_if_done(local);
            self.queue_credit_update(local);
        }
    }

    fn queue_credit_update(&mut self, local: u32) {
        if let Some(conn) = self.connections.get(&local)
            && matches!(conn.state, State::Established)
            && conn.credit_update_due()
        {
            let update = self.header(local, conn, op::CREDIT_UPDATE, 0);
            self.connections
                .get_mut(&local)
                .expect("present")
                .fwd_cnt_told = update.fwd_cnt;
            self.control.push_back(update);
        }
    }

    /// The next packet for the guest, with at most `room` payload bytes.
    pub fn to_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(hdr) = self.control.pop_front() {
            if let Some(conn) = self.connections.get_mut(&hdr.src_port) {
                conn.fwd_cnt_told = hdr.fwd_cnt;
            }
            return Some((hdr, Vec::new()));
        }
        // Round-robin over connections with data and credit.
        let ports: Vec<u32> = self
            .connections
            .range(self.last_served.wrapping_add(1)..)
            .chain(self.connections.range(..=self.last_served))
            .filter(|(_, c)| matches!(c.state, State::Established) && c.readable && c.credit() > 0)
            .map(|(port, _)| *port)
            .collect();
        for local in ports {
            let conn = self.connections.get_mut(&local).expect("listed above");
            let max = room.min(conn.credit() as usize);
            if max == 0 {
                continue;
            }
            match conn.read_from_host(max) {
                Ok(None) => continue,
                Ok(Some(data)) if data.is_empty() => {
                    // The host end closed: tell the guest, forget the connection.
                    let mut hdr = self.header(local, &self.connections[&local], op::SHUTDOWN, 0);
                    hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    self.close(local);
                    return Some((hdr, Vec::new()));
                }
                Ok(Some(data)) => {
                    conn.rx_cnt = conn.rx_cnt.wrapping_add(data.len() as u32);
                    let hdr =
                        self.header(local, &self.connections[&local], op::RW, data.len() as u32);
                    self.connections
                        .get_mut(&local)
                        .expect("present")
                        .fwd_cnt_told = hdr.fwd_cnt;
                    self.last_served = local;
                    return Some((hdr, data));
                }
                Err(e) => {
                    tracing::debug!(local, "vsock host stream failed: {e}");
                    self.reset(local);
                    return self.control.pop_front().map(|h| (h, Vec::new()));
                }
            }
        }
        None
    }

    /// Aborts connection `local`: RST to the guest, host end closed.
    fn reset(&mut self, local: u32) {
        if let Some(conn) = self.connections.get(&local) {
            let rst = self.header(local, conn, op::RST, 0);
            self.control.push_back(rst);
        }
        self.close(local);
    }

    fn close_if_done(&mut self, local: u32) {
        let done = self
            .connections
            .get(&local)
            .is_some_and(|c| c.peer_done && c.to_host.is_empty());
        if done {
            self.reset(local);
        }
    }

    fn close(&mut self, local: u32) {
        if let Some(mut conn) = self.connections.remove(&local) {
            conn.fail(
                io::ErrorKind::ConnectionAborted,
                "the vsock connection closed",
            );
            self.closed.push(conn.stream);
        }
    }

    /// The open connections as (host port, guest port), for a snapshot.
    pub fn open_ports(&self) -> Vec<(u32, u32)> {
        self.connections
            .iter()
            .map(|(&local, conn)| (local, conn.peer_port))
            .collect()
    }

    /// Tells the guest that connections it had in a snapshot are gone: an
    /// RST for each, ahead of anything else this muxer sends it.
    pub fn reset_saved(&mut self, ports: &[(u32, u32)]) {
        for &(local, peer) in ports {
            self.control.push_back(Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local,
                dst_port: peer,
                type_: TYPE_STREAM,
                op: op::RST,
                ..Header::default()
            });
        }
    }

    /// Drops every connection (device reset).
    pub fn clear(&mut self) {
        let ports: Vec<u32> = self.connections.keys().copied().collect();
        for port in ports {
            self.close(port);
        }
        self.control.clear();
    }

    /// Streams to start watching (fd, host port).
    pub fn take_new_streams(&mut self) -> Vec<(RawFd, u32)> {
        std::mem::take(&mut self.new_streams)
    }

    /// Streams to stop watching and drop.
    pub fn take_closed(&mut self) -> Vec<UnixStream> {
        std::mem::take(&mut self.closed)
    }
}

#[cfg(test)]
mod tests;
