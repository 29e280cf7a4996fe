//! `cellbox sandbox spawn` and `connect`: your terminal attached to a shell
//! in a sandbox, through the server's sandbox traffic (envd's `Start` with a
//! PTY, `SendInput` for keys, `Update` on window resizes), as E2B's CLI does.
//! Where stdin is no terminal, its lines are typed in as they come.

use std::io::{IsTerminal as _, Write as _};
use std::os::fd::AsFd as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use nix::sys::termios;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

/// Where a sandbox's envd is reached, and with what.
pub struct Target {
    pub url: String,
    pub id: String,
    pub token: String,
}

impl Target {
    fn post(&self, http: &reqwest::Client, method: &str) -> reqwest::RequestBuilder {
        http.post(format!(
            "{}/process.Process/{method}",
            self.url.trim_end_matches('/')
        ))
        .header("E2b-Sandbox-Id", &self.id)
        .header("E2b-Sandbox-Port", "49983")
        .header("X-Access-Token", &self.token)
    }

    async fn unary(&self, http: &reqwest::Client, method: &str, body: Value) -> Result<(), String> {
        let response = self
            .post(http, method)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "{method}: {}",
                response.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// The terminal's size (80 × 24 where there is none).
fn window_size() -> (u16, u16) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the valid pointer given.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 && size.ws_row > 0 {
        (size.ws_col, size.ws_row)
    } else {
        (80, 24)
    }
}

/// Puts stdin's terminal in raw mode while it lives (keys go to the shell
/// in the sandbox, Ctrl-C included), and back on drop.
struct RawMode(Option<termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, saved);
        }
    }
}

/// Runs a login shell in a terminal in the sandbox, attached to this one,
/// until it exits; returns its exit code.
pub async fn attach(target: &Target) -> Result<i32, String> {
    let http = reqwest::Client::new();
    let (cols, rows) = window_size();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let start = json!({
        "process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": term}},
        "pty": {"size": {"cols": cols, "rows": rows}},
    });
    let message = start.to_string();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    let mut response = target
        .post(&http, "Start")
        .header("Content-Type", "application/connect+json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("starting a shell: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "starting a shell: {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let _raw = RawMode::enter();
    let mut frames = Frames::default();
    let mut pid = None;
    let mut keys = tokio::io::stdin();
    let mut key_buffer = vec![0u8; 4096];
    let mut stdin_open = true;
    let mut eof = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| format!("watching the window size: {e}"))?;
    loop {
        tokio::select! {
            chunk = response.chunk() => {
                let Some(chunk) = chunk.map_err(|e| format!("the shell's stream: {e}"))? else {
                    return Err("the shell's stream ended without its exit".into());
                };
                frames.push(&chunk);
                while let Some(frame) = frames.next()? {
                    let event = &frame["event"];
                    if let Some(started) = event["start"]["pid"].as_u64() {
                        pid = Some(started);
                    } else if let Some(data) = event["data"]["pty"].as_str() {
                        let bytes = BASE64.decode(data).unwrap_or_default();
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&bytes);
                        let _ = out.flush();
                    } else if event.get("end").is_some() {
                        return Ok(event["end"]["exitCode"].as_i64().unwrap_or(0) as i32);
                    } else if let Some(error) = frame.get("error") {
                        return Err(format!("the shell's stream: {error}"));
                    }
                }
            }
            read = keys.read(&mut key_buffer), if stdin_open && pid.is_some() => {
                let n = read.map_err(|e| format!("reading the keyboard: {e}"))?;
                if n == 0 {
                    stdin_open = false;
                    continue;
                }
                let input = json!({"process": {"pid": pid}, "input": {"pty": BASE64.encode(&key_buffer[..n])}});
                // A shell that just ended refuses keys; its end is in the stream.
                let _ = target.unary(&http, "SendInput", input).await;
            }
            // End of input: Ctrl-D, once a second until the shell ends (one
            // typed ahead of its prompt can be lost).
            _ = eof.tick(), if !stdin_open => {
                let input = json!({"process": {"pid": pid}, "input": {"pty": BASE64.encode([4u8])}});
                let _ = target.unary(&http, "SendInput", input).await;
            }
            _ = resized.recv(), if pid.is_some() => {
                let (cols, rows) = window_size();
                let update = json!({"process": {"pid": pid}, "pty": {"size": {"cols": cols, "rows": rows}}});
                target.unary(&http, "Update", update).await?;
            }
        }
    }
}

/// Connect's stream framing: a flags byte, a 4-byte length, the message;
/// flag 2 marks the end-of-stream message.
#[derive(Default)]
struct Frames(Vec<u8>);

impl Frames {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    fn next(&mut self) -> Result<Option<Value>, String> {
        if self.0.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.0[1], self.0[2], self.0[3], self.0[4]]) as usize;
        if self.0.len() < 5 + length {
            return Ok(None);
        }
        let frame: Vec<u8> = self.0.drain(..5 + length).collect();
        serde_json::from_slice(&frame[5..])
            .map(Some)
            .map_err(|e| format!("a garbled frame from the server: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_where_their_length_says() {
        let mut frames = Frames::default();
        let message = br#"{"event":{"start":{"pid":7}}}"#;
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
        bytes.extend_from_slice(message);
        frames.push(&bytes[..3]);
        assert_eq!(frames.next().unwrap(), None);
        frames.push(&bytes[3..]);
        frames.push(&[2, 0, 0, 0, 2]);
        assert_eq!(frames.next().unwrap().unwrap()["event"]["start"]["pid"], 7);
        assert_eq!(frames.next().unwrap(), None);
        frames.push(b"{}");
        assert_eq!(frames.next().unwrap(), Some(json!({})));
        frames.push(&[0, 0, 0, 0, 1, b'x']);
        assert!(frames.next().is_err());
    }
}
