//! The muxer at the header level: connection set-up, data both ways, credit,
//! and everything a misbehaving guest may send.

use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, channel};

use super::*;

const GUEST: u64 = 3;

fn guest_header(rx: &Header, op: u16) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: rx.dst_port,
        dst_port: rx.src_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 1 << 20,
        ..Header::default()
    }
}

/// A muxer with one connection to guest port 1234, in REQUEST-sent state.
fn connecting(announce: bool) -> (Muxer, UnixStream, Receiver<io::Result<()>>, Header) {
    let mut muxer = Muxer::new(GUEST);
    let (user, host_end) = UnixStream::pair().unwrap();
    let (waiter, answer) = channel();
    muxer.connect(ConnectRequest {
        stream: host_end,
        port: 1234,
        waiter: Some(waiter),
        announce,
    });
    assert_eq!(muxer.take_new_streams().len(), 1);
    let (request, data) = muxer.to_guest(4096).unwrap();
    assert_eq!(
        (request.op, request.dst_port, request.dst_cid),
        (op::REQUEST, 1234, GUEST)
    );
    assert!(request.src_port >= FIRST_HOST_PORT && data.is_empty());
    (muxer, user, answer, request)
}

fn established() -> (Muxer, UnixStream, Header) {
    let (mut muxer, user, answer, request) = connecting(false);
    muxer.from_guest(&guest_header(&request, op::RESPONSE), &[]);
    answer.recv().unwrap().unwrap();
    (muxer, user, request)
}

#[test]
fn data_flows_both_ways_once_the_guest_accepts() {
    let (mut muxer, mut user, request) = established();
    user.write_all(b"to the guest").unwrap();
    muxer.host_event(request.src_port, true, false);
    let (rw, data) = muxer.to_guest(4096).unwrap();
    assert_eq!(
        (rw.op, rw.len, data.as_slice()),
        (op::RW, 12, &b"to the guest"[..])
    );
    assert!(muxer.to_guest(4096).is_none(), "nothing more to send");

    let mut from_guest = guest_header(&request, op::RW);
    from_guest.len = 9;
    muxer.from_guest(&from_guest, b"to host!!");
    let mut buf = [0u8; 9];
    user.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to host!!");
}

#[test]
fn host_data_respects_the_guests_credit() {
    let (mut muxer, mut user, request) = established();
    let mut small = guest_header(&request, op::CREDIT_UPDATE);
    small.buf_alloc = 4;
    muxer.from_guest(&small, &[]);
    user.write_all(b"0123456789").unwrap();
    muxer.host_event(request.src_port, true, false);
    let (_, data) = muxer.to_guest(4096).unwrap();
    assert_eq!(data, b"0123");
    assert!(muxer.to_guest(4096).is_none(), "no credit left");
    small.fwd_cnt = 4; // the guest consumed those four bytes
    muxer.from_guest(&small, &[]);
    assert_eq!(muxer.to_guest(4096).unwrap().1, b"4567");
    // The packet size limit applies too.
    small.fwd_cnt = 8;
    muxer.from_guest(&small, &[]);
    assert_eq!(muxer.to_guest(1).unwrap().1, b"8");
}

#[test]
fn the_guest_refusing_fails_the_connect() {
    let (mut muxer, _user, answer, request) = connecting(false);
    muxer.from_guest(&guest_header(&request, op::RST), &[]);
    let err = answer.recv().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(muxer.is_empty());
    assert_eq!(muxer.take_closed().len(), 1);
}

#[test]
fn unknown_connections_are_reset_and_spoofed_packets_dropped() {
    let (mut muxer, _user, request) = established();
    let mut stray = guest_header(&request, op::RW);
    stray.dst_port = 77;
    muxer.from_guest(&stray, b"x");
    let (rst, _) = muxer.to_guest(4096).unwrap();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (op::RST, 77, request.dst_port)
    );
    // An RST for an unknown connection gets no answer.
    stray.op = op::RST;
    muxer.from_guest(&stray, &[]);
    assert!(muxer.to_guest(4096).is_none());
    // Wrong source CID (spoofed) or destination: silently dropped.
    let mut spoofed = guest_header(&request, op::RW);
    spoofed.src_cid = 99;
    muxer.from_guest(&spoofed, b"x");
    spoofed = guest_header(&request, op::REQUEST);
    spoofed.dst_cid = 5;
    muxer.from_guest(&spoofed, &[]);
    assert!(muxer.to_guest(4096).is_none());
    // A guest connecting to the host is refused; a non-stream type too.
    let mut inbound = guest_header(&request, op::REQUEST);
    inbound.dst_port = 22;
    muxer.from_guest(&inbound, &[]);
    assert_eq!(muxer.to_guest(4096).unwrap().0.op, op::RST);
    let mut dgram = guest_header(&request, op::RW);
    dgram.type_ = 2;
    muxer.from_guest(&dgram, b"x");
    assert_eq!(muxer.to_guest(4096).unwrap().0.op, op::RST);
    assert_eq!(muxer.len(), 1, "the real connection is untouched");
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let (mut muxer, user, request) = established();
    let mut rw = guest_header(&request, op::RW);
    let chunk = vec![7u8; 64 << 10];
    rw.len = chunk.len() as u32;
    // The user never reads: the socket buffer fills, then our buffer.
    for _ in 0..64 {
        muxer.from_guest(&rw, &chunk);
        if muxer.is_empty() {
            break;
        }
    }
    assert!(muxer.is_empty(), "the connection was reset");
    let mut saw_rst = false;
    while let Some((h, _)) = muxer.to_guest(4096) {
        saw_rst |= h.op == op::RST;
    }
    assert!(saw_rst);
    drop(user);
}

#[test]
fn closing_either_end_closes_the_other() {
    // Host end closes: the guest is told with SHUTDOWN.
    let (mut muxer, user, request) = established();
    drop(user);
    muxer.host_event(request.src_port, true, false);
    let (shutdown, _) = muxer.to_guest(4096).unwrap();
    assert_eq!(
        (shutdown.op, shutdown.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    assert!(muxer.is_empty());

    // Guest shuts down sending: the user reads its data, then end of stream.
    let (mut muxer, mut user, request) = established();
    let mut rw = guest_header(&request, op::RW);
    rw.len = 3;
    muxer.from_guest(&rw, b"bye");
    let mut shutdown = guest_header(&request, op::SHUTDOWN);
    shutdown.flags = SHUTDOWN_SEND;
    muxer.from_guest(&shutdown, &[]);
    drop(muxer.take_closed());
    let mut all = Vec::new();
    user.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
}

#[test]
fn announced_connections_greet_with_ok_and_the_host_port() {
    let (mut muxer, mut user, _answer, request) = connecting(true);
    muxer.from_guest(&guest_header(&request, op::RESPONSE), &[]);
    let mut rw = guest_header(&request, op::RW);
    rw.len = 2;
    muxer.from_guest(&rw, b"hi");
    let expected = format!("OK {}\nhi", request.src_port);
    let mut buf = vec![0u8; expected.len()];
    user.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), expected);
}

#[test]
fn credit_updates_flow_back_as_the_host_consumes() {
    let (mut muxer, mut user, request) = established();
    let mut rw = guest_header(&request, op::RW);
    let chunk = vec![1u8; 16 << 10];
    rw.len = chunk.len() as u32;
    let mut read_back = vec![0u8; chunk.len()];
    let mut updates = 0;
    for _ in 0..8 {
        muxer.from_guest(&rw, &chunk);
        user.read_exact(&mut read_back).unwrap();
        while let Some((h, _)) = muxer.to_guest(4096) {
            if h.op == op::CREDIT_UPDATE {
                updates += 1;
                assert!(h.fwd_cnt > 0);
            }
        }
    }
    assert!(updates >= 1, "128 KiB consumed must be announced");
    let mut ask = guest_header(&request, op::CREDIT_REQUEST);
    ask.len = 0;
    muxer.from_guest(&ask, &[]);
    let (reply, _) = muxer.to_guest(4096).unwrap();
    assert_eq!((reply.op, reply.fwd_cnt), (op::CREDIT_UPDATE, 128 << 10));
}
