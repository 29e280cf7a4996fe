//! envd's request parsing against garbage: thousands of requests made by
//! mutating valid Connect calls (bytes flipped, cut, repeated; envelopes
//! with lying lengths; wrong types, huge numbers, deep nesting; odd headers)
//! go straight into the router. Every one must get an answer — a Connect
//! error or a result, never a panic or a server error — and the server
//! must answer a plain call afterwards. Seeded, so a failure repeats.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cellbox::serve::envd;
use cellbox::{BackendPolicy, Sandbox, SandboxOptions};
use tower::ServiceExt as _;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid calls to start from: (route, JSON message, streaming?).
const SEEDS: &[(&str, &str, bool)] = &[
    (
        "/filesystem.Filesystem/Stat",
        r#"{"path": "/home/user"}"#,
        false,
    ),
    (
        "/filesystem.Filesystem/MakeDir",
        r#"{"path": "/home/user/a/b"}"#,
        false,
    ),
    (
        "/filesystem.Filesystem/Move",
        r#"{"source": "/home/user/a", "destination": "/home/user/c"}"#,
        false,
    ),
    (
        "/filesystem.Filesystem/ListDir",
        r#"{"path": "/home/user", "depth": 2}"#,
        false,
    ),
    (
        "/filesystem.Filesystem/Remove",
        r#"{"path": "/home/user/c"}"#,
        false,
    ),
    ("/process.Process/List", "{}", false),
    (
        "/process.Process/SendInput",
        r#"{"process": {"pid": 7}, "input": {"stdin": "aGk="}}"#,
        false,
    ),
    (
        "/process.Process/SendSignal",
        r#"{"process": {"tag": "t"}, "signal": "SIGNAL_SIGKILL"}"#,
        false,
    ),
    (
        "/process.Process/CloseStdin",
        r#"{"process": {"pid": 1}}"#,
        false,
    ),
    (
        "/process.Process/Start",
        r#"{"process": {"cmd": "/bin/echo", "args": ["hi"], "envs": {"A": "b"}, "cwd": "/tmp"}, "tag": "x", "stdin": false}"#,
        true,
    ),
    (
        "/process.Process/Connect",
        r#"{"process": {"pid": 3}}"#,
        true,
    ),
    (
        "/process.Process/StreamInput",
        r#"{"start": {"process": {"pid": 3}}}"#,
        true,
    ),
    ("/process.Process/Nonsense", "{}", false),
];

/// Odd values spliced into messages.
const SPLICES: &[&str] = &[
    "null",
    "-1",
    "4294967296",
    "1e999",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "true",
    "18446744073709551616",
    "\"%%%\"",
    "\"../../../../etc/passwd\"",
];

fn envelope(flags: u8, message: &[u8], length: u32) -> Vec<u8> {
    let mut framed = vec![flags];
    framed.extend(length.to_be_bytes());
    framed.extend(message);
    framed
}

fn mutate(rng: &mut Rng, json: &str) -> Vec<u8> {
    let mut bytes = json.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            1 => bytes.truncate(rng.below(bytes.len() + 1)),
            2 => {
                let splice = SPLICES[rng.below(SPLICES.len())];
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // Replace one value after a colon, if there is one.
                if let Some(colon) = text.find(':') {
                    let end = text[colon..]
                        .find([',', '}'])
                        .map_or(text.len(), |e| colon + e);
                    bytes = format!("{}: {splice}{}", &text[..colon], &text[end..]).into_bytes();
                }
            }
            3 => {
                let depth = 1 + rng.below(5000);
                bytes = format!("{}{}", "[".repeat(depth), "]".repeat(rng.below(depth + 1)))
                    .into_bytes();
            }
            4 => bytes.extend_from_slice(&[0xff, 0xfe, 0x80]),
            5 => {
                let copy = bytes.clone();
                bytes.extend(copy);
            }
            _ => bytes.insert(0, b' '),
        }
    }
    bytes
}

fn request(rng: &mut Rng) -> Request<Body> {
    let (route, json, streaming) = SEEDS[rng.below(SEEDS.len())];
    let message = if rng.below(4) == 0 {
        json.as_bytes().to_vec()
    } else {
        mutate(rng, json)
    };
    let (content_type, body) = if streaming && rng.below(5) != 0 {
        let length = match rng.below(4) {
            0 => u32::MAX,
            1 => message.len() as u32 + 1 + rng.below(100) as u32,
            _ => message.len() as u32,
        };
        let mut body = envelope((rng.next() as u8) & 0x03, &message, length);
        if rng.below(2) == 0 {
            body.extend(envelope(0x02, b"{}", 2)); // an end-of-stream frame
        }
        ("application/connect+json", body)
    } else {
        let kinds = [
            "application/json",
            "application/proto",
            "",
            "application/json; charset=utf-8",
        ];
        (kinds[rng.below(kinds.len())], message)
    };
    let mut builder = Request::post(route).header("content-type", content_type);
    let timeouts = [
        "0",
        "1",
        "-5",
        "abc",
        "18446744073709551615",
        "99999999999999999999",
    ];
    if rng.below(3) == 0 {
        builder = builder.header("connect-timeout-ms", timeouts[rng.below(timeouts.len())]);
    }
    if rng.below(4) == 0 {
        builder = builder.header("authorization", "Basic !!!not base64");
    }
    builder.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn garbage_requests_get_answers_never_a_panic() {
    let sandbox = Sandbox::create(SandboxOptions::default().with_backend(BackendPolicy::Wasm))
        .await
        .expect("a WebAssembly sandbox");
    let router = envd::router(sandbox.clone());
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..3000 {
        let request = request(&mut rng);
        let route = request.uri().path().to_string();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        // 501 (no terminals, no watching) and 503 (no heavy backend in a
        // WebAssembly-only sandbox) are answers; 500 would be a bug.
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "round {round}: {route}"
        );
        // Read the whole answer (a stream ends by itself: its process is gone or never was).
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            axum::body::to_bytes(response.into_body(), 1 << 20),
        )
        .await;
        assert!(body.is_ok(), "round {round}: {route}'s answer did not end");
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    // Both parsed calls and refused ones: the mutations reach past the parser.
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    let list = Request::post("/process.Process/List")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let answer = router.oneshot(list).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    sandbox.close().await.unwrap();
}
