//! DNS for a sandbox whose internet access is closed (no
//! `allow_internet_access`, or `0.0.0.0/0` denied): its queries (UDP, port
//! 53, to any server) are redirected here and answered by the rules.
//! A name `allow_out` allows gets the addresses it has on the host;
//! every other name does not exist. So the sandbox learns nothing the
//! rules do not let it reach, and cannot carry data out in the names it
//! asks for (a resolver upstream would pass them on to any domain's
//! servers). With internet access, slirp4netns's forwarder answers.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::Shared;

/// Queries answered at once; past that, more wait in the socket's buffer.
const MAX_QUERIES: usize = 64;
/// How long an answer may be trusted.
const TTL: u32 = 30;

pub(super) async fn serve(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let room = Arc::new(Semaphore::new(MAX_QUERIES));
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok(permit) = room.clone().acquire_owned().await else {
            return;
        };
        let Ok((read, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buffer[..read]) else {
            continue;
        };
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Ok(answer) = answer(query, &shared).await.to_vec() {
                let _ = socket.send_to(&answer, from).await;
            }
            drop(permit);
        });
    }
}

/// The answer to `query` under the sandbox's rules now.
async fn answer(query: Message, shared: &Shared) -> Message {
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let [question] = query.queries() else {
        answer.set_response_code(ResponseCode::FormErr);
        return answer;
    };
    answer.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if !shared.policy().allows_name(name) {
        answer.set_response_code(ResponseCode::NXDomain);
        return answer;
    }
    let wanted = question.query_type();
    if !matches!(wanted, RecordType::A | RecordType::AAAA) {
        return answer; // the name exists; nothing of that type
    }
    let Some(addresses) = super::resolve(shared, name, 0).await else {
        answer.set_response_code(ResponseCode::ServFail);
        return answer;
    };
    for address in addresses {
        let data = match (address.ip(), wanted) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        answer.add_answer(Record::from_rdata(question.name().clone(), TTL, data));
    }
    answer
}
