//! Shell commands: run with `/bin/sh -c`, output streamed, exit code last.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::protocol::{Failure, ReplyBody, Stream};

/// Runs a command to completion, sending its output and then its exit code
/// (or a timeout failure, after killing its process group).
pub fn run(
    cmd: &str,
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    send: &mut dyn FnMut(ReplyBody),
) {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return send(ReplyBody::failed(
                Failure::Io,
                format!("starting /bin/sh: {e}"),
            ));
        }
    };
    let (tx, rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let (tx, Some(mut pipe)) = (tx.clone(), pipe) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                if tx.send((stream, buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    loop {
        let wait = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok((stream, bytes)) => send(ReplyBody::CommandOutput {
                stream,
                data: BASE64.encode(bytes),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => {
                timed_out = true;
                // SAFETY: kill(2) on the process group created for this command.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = child.wait();
    if timed_out {
        return send(ReplyBody::failed(
            Failure::Timeout,
            format!(
                "the command did not finish within {:?} and was killed",
                timeout.unwrap_or_default()
            ),
        ));
    }
    match status {
        Ok(status) => send(ReplyBody::CommandExit {
            code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        }),
        Err(e) => send(ReplyBody::failed(
            Failure::Io,
            format!("waiting for the command: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(cmd: &str, timeout: Option<Duration>) -> Vec<ReplyBody> {
        let mut replies = Vec::new();
        run(
            cmd,
            Some("/"),
            &BTreeMap::from([("GREETING".into(), "hi".into())]),
            timeout,
            &mut |r| replies.push(r),
        );
        replies
    }

    #[test]
    fn output_then_exit_code() {
        let replies = collect("echo $GREETING; echo oops >&2; exit 3", None);
        let mut stdout = Vec::new();
        for reply in &replies {
            if let ReplyBody::CommandOutput {
                stream: Stream::Stdout,
                data,
            } = reply
            {
                stdout.extend(BASE64.decode(data).unwrap());
            }
        }
        assert_eq!(stdout, b"hi\n");
        assert!(replies.iter().any(|r| matches!(
            r,
            ReplyBody::CommandOutput {
                stream: Stream::Stderr,
                ..
            }
        )));
        assert_eq!(replies.last(), Some(&ReplyBody::CommandExit { code: 3 }));
    }

    #[test]
    fn a_slow_command_is_killed_at_its_timeout() {
        let started = Instant::now();
        let replies = collect("sleep 30", Some(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            replies.last(),
            Some(ReplyBody::Failed {
                failure: Failure::Timeout,
                ..
            })
        ));
    }
}
