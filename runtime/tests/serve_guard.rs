//! `cellbox serve` refuses what a web page could send it: a foreign `Host`
//! (DNS rebinding), a cross-origin request (a "simple" multipart POST needs
//! no preflight), and, with a token, anything without it. The sandbox is the
//! WebAssembly fast path (no root, starts at once).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use cellbox::serve::{Access, ServeConfig, serve};
use cellbox::{BackendPolicy, SandboxOptions};

/// A server on its own two ports, stopped when dropped.
struct Server {
    code: u16,
    envd: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(code: u16, envd: u16, access: Access) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig {
            access,
            api_port: None,
            code_port: Some(code),
            envd_port: Some(envd),
            sandbox: SandboxOptions::default().with_backend(BackendPolicy::Wasm),
            ..ServeConfig::new("an-api-key-for-these-tests")
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime
                .block_on(serve(config, async {
                    let _ = stopped.await;
                }))
                .unwrap();
        });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", envd)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            code,
            envd,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends one HTTP/1.1 request with `headers` (Host included only if given);
/// returns the status and the whole response.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// `POST /execute` of `6 * 7` with `headers` (and a JSON content type).
fn execute(port: u16, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = headers.to_vec();
    all.push(("Content-Type", "application/json"));
    http(port, "POST", "/execute", &all, r#"{"code": "6 * 7"}"#)
}

#[test]
fn foreign_hosts_and_web_pages_are_refused_local_programs_served() {
    let server = Server::start(
        45_101,
        45_102,
        Access {
            allowed_origins: vec!["http://localhost:3000".into()],
            ..Access::default()
        },
    );
    let (code, envd) = (server.code, server.envd);

    let (status, body) = execute(code, &[("Host", "localhost:45101")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""text":"42""#), "{body}");

    // DNS rebinding: the page's own name comes as Host.
    let (status, body) = execute(code, &[("Host", "rebind.example:45101")]);
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains(r#""text":"42""#));

    // A cross-origin "simple" request: no preflight, so it must be refused outright.
    let multipart = "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\npwned\r\n--x--\r\n";
    let (status, body) = http(
        envd,
        "POST",
        "/files?path=/home/user/pwned",
        &[
            ("Host", "localhost:45102"),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "multipart/form-data; boundary=x"),
        ],
        multipart,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = execute(code, &[("Host", "localhost"), ("Origin", "null")]);
    assert_eq!(status, 403, "{body}");

    // An allowed origin is served, with CORS headers, preflight included.
    let (status, body) = http(
        code,
        "OPTIONS",
        "/execute",
        &[
            ("Host", "localhost"),
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        "",
    );
    assert!(status == 200 || status == 204, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("access-control-allow-origin: http://localhost:3000"),
        "{body}"
    );
    let (status, body) = execute(
        code,
        &[("Host", "localhost"), ("Origin", "http://localhost:3000")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""text":"42""#), "{body}");
}

#[test]
fn with_a_token_every_request_but_health_must_carry_it() {
    let token = Access::generate_token().unwrap();
    let server = Server::start(
        45_103,
        45_104,
        Access {
            token: Some(token.clone()),
            ..Access::default()
        },
    );
    let (status, _) = http(server.code, "GET", "/health", &[("Host", "localhost")], "");
    assert_eq!(status, 200);
    let (status, body) = execute(server.code, &[("Host", "localhost")]);
    assert_eq!(status, 401, "{body}");
    let (status, _) = http(
        server.envd,
        "POST",
        "/filesystem.Filesystem/ListDir",
        &[
            ("Host", "localhost"),
            ("X-Access-Token", "wrong"),
            ("Content-Type", "application/json"),
        ],
        "{}",
    );
    assert_eq!(status, 401);
    let (status, body) = execute(
        server.code,
        &[("Host", "localhost"), ("X-Access-Token", &token)],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""text":"42""#), "{body}");
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ServeConfig {
        bind: IpAddr::from([0, 0, 0, 0]),
        api_port: None,
        code_port: Some(45_105),
        envd_port: None,
        sandbox: SandboxOptions::default().with_backend(BackendPolicy::Wasm),
        ..ServeConfig::new("an-api-key-for-these-tests")
    };
    let refused = runtime.block_on(serve(config, std::future::pending()));
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains("access token"), "{message}");
}

/// A request whose body stops arriving fails after `BODY_IDLE_TIMEOUT`
/// instead of holding its connection and handler for ever; the server goes on.
#[test]
fn a_stalled_request_body_is_dropped() {
    let server = Server::start(45_106, 45_107, Access::default());
    let mut stream = TcpStream::connect(("127.0.0.1", server.code)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"code\": ",
        )
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let waited = started.elapsed();
    assert!(
        waited >= cellbox::serve::BODY_IDLE_TIMEOUT
            && waited < cellbox::serve::BODY_IDLE_TIMEOUT + Duration::from_secs(30),
        "answered after {waited:?}: {response}"
    );
    assert!(
        response.starts_with("HTTP/1.1 4") || response.is_empty(),
        "{response}"
    );
    let (status, body) = execute(server.code, &[("Host", "localhost")]);
    assert_eq!(status, 200, "{body}");
}
