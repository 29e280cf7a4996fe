//! The protocol server against bad and good input, in process (no kernel is
//! started: only requests that need no Python are sent).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use cellbox_guest_init::contexts::Contexts;
use cellbox_guest_init::frame;
use cellbox_guest_init::protocol::{Failure, Language, Op, Reply, ReplyBody, Request, VERSION};
use cellbox_guest_init::server::{self, Ended};

fn start() -> (File, std::thread::JoinHandle<Ended>) {
    let (host, guest) = UnixStream::pair().unwrap();
    let contexts = Arc::new(Contexts::new("/nonexistent/python3", None, "/tmp"));
    let server =
        std::thread::spawn(move || server::serve(File::from(OwnedFd::from(guest)), contexts, None));
    (File::from(OwnedFd::from(host)), server)
}

fn reply(stream: &mut File) -> Reply {
    frame::read(stream).unwrap().expect("a reply")
}

fn ask(stream: &mut File, id: u64, op: Op) -> ReplyBody {
    frame::write(stream, &Request { id, op }).unwrap();
    let reply = reply(stream);
    assert_eq!(reply.id, id);
    reply.body
}

#[test]
fn garbage_gets_an_error_reply_and_the_server_goes_on() {
    let (mut stream, server) = start();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200u32 {
        let len = (state % 300) as usize;
        let mut payload = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            payload.push(state as u8);
        }
        if round.is_multiple_of(3) {
            payload = format!("{{\"id\": {round}, \"op\": {{\"type\": \"nope\"}}}}").into_bytes();
        }
        stream
            .write_all(&(payload.len() as u32).to_be_bytes())
            .unwrap();
        stream.write_all(&payload).unwrap();
        let answer = reply(&mut stream);
        assert!(
            matches!(
                answer.body,
                ReplyBody::Failed {
                    failure: Failure::BadRequest,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
    assert!(matches!(
        ask(
            &mut stream,
            1,
            Op::Hello {
                version: VERSION,
                entropy: None
            }
        ),
        ReplyBody::Hello { .. }
    ));
    assert_eq!(ask(&mut stream, 2, Op::Shutdown), ReplyBody::Done);
    assert_eq!(server.join().unwrap(), Ended::Shutdown);
}

#[test]
fn an_oversized_frame_is_refused_and_the_connection_closed() {
    let (mut stream, server) = start();
    stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(
        reply(&mut stream).body,
        ReplyBody::Failed {
            failure: Failure::BadRequest,
            ..
        }
    ));
    assert_eq!(server.join().unwrap(), Ended::Disconnected);
}

#[test]
fn versions_contexts_and_files() {
    let (mut stream, _server) = start();
    assert!(matches!(
        ask(
            &mut stream,
            1,
            Op::Hello {
                version: VERSION + 1,
                entropy: None,
            }
        ),
        ReplyBody::Failed {
            failure: Failure::Version,
            ..
        }
    ));
    let ReplyBody::Contexts { contexts } = ask(&mut stream, 2, Op::ListContexts) else {
        panic!()
    };
    // One default context per language.
    let languages: Vec<_> = contexts.iter().map(|c| c.language).collect();
    assert_eq!(languages.len(), Language::ALL.len());
    assert!(
        Language::ALL.iter().all(|l| languages.contains(l)),
        "{contexts:?}"
    );
    let create = Op::CreateContext {
        cwd: None,
        language: Language::Javascript,
    };
    let ReplyBody::Context(created) = ask(&mut stream, 3, create) else {
        panic!()
    };
    assert_eq!(
        (created.cwd.as_str(), created.language),
        ("/tmp", Language::Javascript)
    );
    let remove_default = Op::RemoveContext {
        context: Language::Javascript.default_context().into(),
    };
    assert!(matches!(
        ask(&mut stream, 30, remove_default),
        ReplyBody::Failed {
            failure: Failure::BadRequest,
            ..
        }
    ));
    assert_eq!(
        ask(
            &mut stream,
            4,
            Op::RemoveContext {
                context: created.id.clone()
            }
        ),
        ReplyBody::Done
    );
    assert!(matches!(
        ask(
            &mut stream,
            5,
            Op::RemoveContext {
                context: created.id
            }
        ),
        ReplyBody::Failed {
            failure: Failure::NotFound,
            ..
        }
    ));
    assert!(matches!(
        ask(
            &mut stream,
            6,
            Op::Execute {
                context: "missing".into(),
                code: "1".into(),
                env: Default::default(),
                timeout_ms: None
            }
        ),
        ReplyBody::Failed {
            failure: Failure::NotFound,
            ..
        }
    ));
    let ReplyBody::Failed { failure, message } = ask(
        &mut stream,
        7,
        Op::Execute {
            context: "default".into(),
            code: "1".into(),
            env: Default::default(),
            timeout_ms: None,
        },
    ) else {
        panic!()
    };
    assert_eq!(failure, Failure::KernelDied, "no python here: {message}");
    assert!(message.contains("/nonexistent/python3"), "{message}");
}

#[test]
fn started_commands_take_stdin_are_listed_and_killed() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (mut stream, server) = start();
    let start_op = |cmd: &str| Op::StartCommand {
        cmd: cmd.into(),
        cwd: None,
        env: Default::default(),
        timeout_ms: None,
        user: None,
        pty: None,
    };
    let ReplyBody::CommandStarted { pid: cat } = ask(&mut stream, 1, start_op("cat")) else {
        panic!("cat did not start")
    };
    let ReplyBody::CommandStarted { pid: sleeper } = ask(&mut stream, 2, start_op("sleep 100"))
    else {
        panic!("sleep did not start")
    };
    let ReplyBody::Commands { commands } = ask(&mut stream, 3, Op::ListCommands) else {
        panic!()
    };
    let mut pids: Vec<u32> = commands.iter().map(|c| c.pid).collect();
    pids.sort();
    let mut expected = vec![cat, sleeper];
    expected.sort();
    assert_eq!(pids, expected);

    let send = Op::SendStdin {
        pid: cat,
        data: b64("abc"),
        eof: true,
    };
    frame::write(&mut stream, &Request { id: 4, op: send }).unwrap();
    // Replies to 1 (cat's output and exit) and 4 (Done) interleave.
    let (mut output, mut exit, mut sent) = (Vec::new(), None, false);
    while exit.is_none() || !sent {
        let answer = reply(&mut stream);
        match (answer.id, answer.body) {
            (4, ReplyBody::Done) => sent = true,
            (1, ReplyBody::CommandOutput { data, .. }) => output.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap(),
            ),
            (1, ReplyBody::CommandExit { code }) => exit = Some(code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((output.as_slice(), exit), (&b"abc"[..], Some(0)));

    assert_eq!(
        ask(&mut stream, 5, Op::KillCommand { pid: sleeper }),
        ReplyBody::Done
    );
    let killed = reply(&mut stream);
    assert_eq!(
        (killed.id, killed.body),
        (2, ReplyBody::CommandExit { code: 128 + 9 })
    );
    assert!(matches!(
        ask(&mut stream, 6, Op::KillCommand { pid: sleeper }),
        ReplyBody::Failed {
            failure: Failure::NotFound,
            ..
        }
    ));
    assert_eq!(
        ask(&mut stream, 7, Op::ListCommands),
        ReplyBody::Commands { commands: vec![] }
    );
    // A command still running at shutdown is killed with the server.
    let ReplyBody::CommandStarted { pid: _ } = ask(&mut stream, 8, start_op("sleep 100")) else {
        panic!()
    };
    frame::write(
        &mut stream,
        &Request {
            id: 9,
            op: Op::Shutdown,
        },
    )
    .unwrap();
    assert_eq!(server.join().unwrap(), Ended::Shutdown);
}
