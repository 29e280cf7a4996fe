//! Tunnels to servers started in the sandbox: the host reaches a port on the
//! guest's loopback through the guest connection ([`Op::OpenPort`]), so that
//! a sandbox needs no network card for it.
//!
//! [`Op::OpenPort`]: crate::protocol::Op::OpenPort

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::lock;
use crate::protocol::{Failure, PORT_CHUNK, PORT_WINDOW, ReplyBody};

/// Tunnels open at once per host connection: each holds a thread and a
/// socket in the guest.
pub const MAX_TUNNELS: usize = 256;

/// How long connecting to a server in the guest may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The open tunnels of one host connection.
#[derive(Debug, Default)]
pub struct Ports {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    open: BTreeMap<u32, Arc<Tunnel>>,
    next: u32,
}

#[derive(Debug)]
struct Tunnel {
    stream: TcpStream,
    /// Chunks the guest may still send before the host acknowledges more;
    /// `None` once closed.
    credit: Mutex<Option<u32>>,
    acked: Condvar,
}

impl Tunnel {
    /// Waits until the host has room for more; false once closed.
    fn wait_for_credit(&self) -> bool {
        let mut credit = lock(&self.credit);
        loop {
            match *credit {
                None => return false,
                Some(left) if left > 0 => return true,
                Some(_) => credit = self.acked.wait(credit).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn spend_one(&self) {
        if let Some(left) = lock(&self.credit).as_mut() {
            *left = left.saturating_sub(1);
        }
    }

    fn add_credit(&self, chunks: u32) {
        if let Some(left) = lock(&self.credit).as_mut() {
            *left = left.saturating_add(chunks).min(PORT_WINDOW);
        }
        self.acked.notify_all();
    }

    fn close(&self) {
        *lock(&self.credit) = None;
        self.acked.notify_all();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Ports {
    /// Connects to `port` on the loopback and passes what the server sends
    /// to `send` until it stops sending or the host closes the tunnel.
    pub fn open(&self, port: u16, send: &mut dyn FnMut(ReplyBody)) {
        let stream = match connect(port) {
            Ok(stream) => stream,
            Err(e) => {
                let message = format!("port {port} is not open in the sandbox: {e}");
                return send(ReplyBody::failed(Failure::NotFound, message));
            }
        };
        let (id, tunnel, mut reader) = {
            let mut table = lock(&self.table);
            if table.open.len() >= MAX_TUNNELS {
                let message = format!("{MAX_TUNNELS} tunnels are open: close one first");
                return send(ReplyBody::failed(Failure::Io, message));
            }
            let reader = match stream.try_clone() {
                Ok(reader) => reader,
                Err(e) => return send(ReplyBody::failed(Failure::Io, e.to_string())),
            };
            let tunnel = Arc::new(Tunnel {
                stream,
                credit: Mutex::new(Some(PORT_WINDOW)),
                acked: Condvar::new(),
            });
            table.next = table.next.wrapping_add(1);
            let id = table.next;
            table.open.insert(id, tunnel.clone());
            (id, tunnel, reader)
        };
        send(ReplyBody::PortOpened { tunnel: id });
        let mut buffer = vec![0; PORT_CHUNK];
        let ended = loop {
            if !tunnel.wait_for_credit() {
                break ReplyBody::Done;
            }
            match reader.read(&mut buffer) {
                Ok(0) => break ReplyBody::Done,
                Ok(n) => {
                    tunnel.spend_one();
                    send(ReplyBody::PortData {
                        data: BASE64.encode(&buffer[..n]),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break ReplyBody::failed(Failure::Io, format!("port {port}: {e}")),
            }
        };
        lock(&self.table).open.remove(&id);
        tunnel.close();
        send(ended);
    }

    /// Writes `data` (base64) to the server, then ends what the host sends
    /// if `eof`.
    pub fn send(&self, tunnel: u32, data: &str, eof: bool) -> ReplyBody {
        let bytes = match BASE64.decode(data) {
            Ok(bytes) => bytes,
            Err(e) => {
                return ReplyBody::failed(Failure::BadRequest, format!("data is not base64: {e}"));
            }
        };
        let Some(open) = self.find(tunnel) else {
            return not_open(tunnel);
        };
        let mut stream = &open.stream;
        if let Err(e) = stream.write_all(&bytes) {
            return ReplyBody::failed(Failure::Io, format!("tunnel {tunnel}: {e}"));
        }
        if eof {
            let _ = stream.shutdown(Shutdown::Write);
        }
        ReplyBody::Done
    }

    /// The host passed `chunks` more of the tunnel's data on.
    pub fn ack(&self, tunnel: u32, chunks: u32) -> ReplyBody {
        match self.find(tunnel) {
            Some(open) => {
                open.add_credit(chunks);
                ReplyBody::Done
            }
            None => not_open(tunnel),
        }
    }

    /// Closes the tunnel both ways (its reader then ends).
    pub fn close(&self, tunnel: u32) -> ReplyBody {
        match lock(&self.table).open.remove(&tunnel) {
            Some(open) => {
                open.close();
                ReplyBody::Done
            }
            None => not_open(tunnel),
        }
    }

    /// Closes every tunnel (the host went away).
    pub fn close_all(&self) {
        let open = std::mem::take(&mut lock(&self.table).open);
        open.values().for_each(|tunnel| tunnel.close());
    }

    fn find(&self, tunnel: u32) -> Option<Arc<Tunnel>> {
        lock(&self.table).open.get(&tunnel).cloned()
    }
}

/// A server on the loopback: IPv4 first, then IPv6.
fn connect(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&v4, CONNECT_WITHIN).or_else(|first| {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&v6, CONNECT_WITHIN).map_err(|_| first)
    })
}

fn not_open(tunnel: u32) -> ReplyBody {
    ReplyBody::failed(Failure::NotFound, format!("no tunnel {tunnel} is open"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Collects a tunnel's replies; returns them when it ends.
    fn run(ports: Arc<Ports>, port: u16) -> std::sync::mpsc::Receiver<ReplyBody> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || ports.open(port, &mut |reply| drop(tx.send(reply))));
        rx
    }

    fn data(reply: ReplyBody) -> Vec<u8> {
        match reply {
            ReplyBody::PortData { data } => BASE64.decode(data).unwrap(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn a_tunnel_carries_both_ways_and_ends_with_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut asked = String::new();
            peer.read_to_string(&mut asked).unwrap();
            peer.write_all(format!("echo: {asked}").as_bytes()).unwrap();
        });
        let ports = Arc::new(Ports::default());
        let replies = run(ports.clone(), port);
        let ReplyBody::PortOpened { tunnel } = replies.recv().unwrap() else {
            panic!("not opened");
        };
        let hello = BASE64.encode("hello");
        assert_eq!(ports.send(tunnel, &hello, true), ReplyBody::Done);
        assert_eq!(data(replies.recv().unwrap()), b"echo: hello");
        assert_eq!(replies.recv().unwrap(), ReplyBody::Done);
        server.join().unwrap();
        assert!(matches!(
            ports.send(tunnel, "", true),
            ReplyBody::Failed { .. }
        ));
    }

    #[test]
    fn the_guest_sends_no_more_than_the_window_ahead_of_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            // Small writes, as a server's: many short chunks.
            for _ in 0..4 * PORT_WINDOW {
                let _ = peer.write_all(&[7u8; 100]);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let ports = Arc::new(Ports::default());
        let replies = run(ports.clone(), port);
        let ReplyBody::PortOpened { tunnel } = replies.recv().unwrap() else {
            panic!("not opened");
        };
        let mut chunks = 0;
        while let Ok(reply) = replies.recv_timeout(Duration::from_millis(500)) {
            assert!(!data(reply).is_empty());
            chunks += 1;
        }
        assert_eq!(chunks, PORT_WINDOW, "chunks sent without an ack");
        assert_eq!(ports.ack(tunnel, 1), ReplyBody::Done);
        let more = data(replies.recv_timeout(Duration::from_secs(5)).unwrap());
        assert!(!more.is_empty());
        assert_eq!(ports.close(tunnel), ReplyBody::Done);
        let last = std::iter::from_fn(|| replies.recv_timeout(Duration::from_secs(5)).ok()).last();
        assert_eq!(last, Some(ReplyBody::Done));
    }

    #[test]
    fn open_tunnels_are_capped_and_the_cap_frees_up_as_they_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds every connection.
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().collect();
            drop(held);
        });
        let ports = Arc::new(Ports::default());
        let mut tunnels = Vec::new();
        for _ in 0..MAX_TUNNELS {
            let replies = run(ports.clone(), port);
            let ReplyBody::PortOpened { tunnel } = replies.recv().unwrap() else {
                panic!("not opened");
            };
            tunnels.push((tunnel, replies));
        }
        let refused = run(ports.clone(), port).recv().unwrap();
        assert!(
            matches!(&refused, ReplyBody::Failed { failure: Failure::Io, message } if message.contains("tunnels are open")),
            "{refused:?}"
        );
        let (first, replies) = tunnels.remove(0);
        assert_eq!(ports.close(first), ReplyBody::Done);
        assert_eq!(replies.recv().unwrap(), ReplyBody::Done);
        let again = run(ports.clone(), port).recv().unwrap();
        assert!(matches!(again, ReplyBody::PortOpened { .. }), "{again:?}");
        ports.close_all();
    }

    #[test]
    fn a_closed_port_is_not_found() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let replies = run(Arc::new(Ports::default()), port);
        assert!(matches!(
            replies.recv().unwrap(),
            ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            }
        ));
    }
}
