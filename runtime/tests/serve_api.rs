//! The control plane and the sandbox gateway of `cellbox serve` under
//! misuse: requests go straight into the API port's router (no sockets) with
//! WebAssembly-only sandboxes. Wrong or missing keys and tokens, garbage
//! bodies, unknown templates and sandboxes, closed ports, too many
//! sandboxes, paused sandboxes that may not resume, forks and snapshots
//! asked for wrongly: each gets a clear answer, and the server keeps serving.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cellbox::serve::api::Stores;
use cellbox::serve::api_app;
use cellbox::serve::fleet::Fleet;
use cellbox::serve::secrets::Secrets;
use cellbox::serve::snapshots::Snapshots;
use cellbox::serve::volumes::Volumes;
use cellbox::{BackendPolicy, SandboxOptions};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const KEY: &str = "e2b_0123456789abcdef0123";

struct Api {
    app: axum::Router,
}

/// A snapshot folder of its own for `test`.
fn snapshot_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellbox-serve-api-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Where `Api::with_snapshots(_, dir)` keeps its volumes.
fn volume_dir(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}-volumes", dir.display()))
}

impl Api {
    fn new(max_sandboxes: usize) -> Api {
        Api::with_snapshots(max_sandboxes, &snapshot_dir("none"))
    }

    fn with_snapshots(max_sandboxes: usize, dir: &Path) -> Api {
        let base = SandboxOptions::default().with_backend(BackendPolicy::Wasm);
        let fleet: Arc<Fleet> = Fleet::new(base, max_sandboxes);
        let snapshots = Arc::new(Snapshots::open(dir).unwrap());
        let secrets = Arc::new(Secrets::open(&dir.join("secrets.json")).unwrap());
        // Beside the snapshot folder, which is made only with a snapshot.
        let volumes = Arc::new(Volumes::open(&volume_dir(dir)).unwrap());
        let stores = Stores {
            snapshots,
            secrets,
            volumes,
        };
        Api {
            app: api_app(fleet, stores, KEY),
        }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A control-plane call with the key.
    async fn control(&self, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(request).await
    }

    /// Creates a sandbox; returns its id and token.
    async fn create(&self, body: Value) -> (String, String) {
        let (status, text) = self
            .control("POST", "/v2/sandboxes", &body.to_string())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let created: Value = serde_json::from_str(&text).unwrap();
        (
            created["sandboxID"].as_str().unwrap().to_string(),
            created["envdAccessToken"].as_str().unwrap().to_string(),
        )
    }

    /// Sandbox traffic: `POST /execute` to `id` on `port` with `token`.
    async fn execute(&self, id: &str, port: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method("POST")
            .uri("/execute")
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", port)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        let body = Body::from(json!({"code": "6 * 7"}).to_string());
        self.call(request.body(body).unwrap()).await
    }
}

#[tokio::test]
async fn keys_bodies_and_templates_are_checked() {
    let api = Api::new(4);
    let no_key = Request::get("/v2/sandboxes").body(Body::empty()).unwrap();
    assert_eq!(api.call(no_key).await.0, StatusCode::UNAUTHORIZED);
    let wrong = Request::get("/v2/sandboxes")
        .header("x-api-key", "e2b_0123456789abcdef0124")
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.call(wrong).await.0, StatusCode::UNAUTHORIZED);
    for (body, status, says) in [
        ("{not json", StatusCode::BAD_REQUEST, "invalid request body"),
        (
            r#"{"templateID": 7}"#,
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
        (
            r#"{"templateID": "nope"}"#,
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            r#"{"templateID": "base", "timeout": 99999999}"#,
            StatusCode::BAD_REQUEST,
            "maximum",
        ),
        (
            r#"{"templateID": "base", "autoResume": {"enabled": true}}"#,
            StatusCode::BAD_REQUEST,
            "autoPause",
        ),
    ] {
        let (got, text) = api.control("POST", "/v2/sandboxes", body).await;
        assert_eq!(got, status, "{body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["code"], status.as_u16());
        assert!(error["message"].as_str().unwrap().contains(says), "{text}");
    }
    let (status, text) = api.control("GET", "/v2/sandboxes", "").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "[]"));
    let (status, _) = api.control("DELETE", "/sandboxes/nosuchsandbox", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.control("POST", "/sandboxes/x/fork", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sandbox_traffic_needs_its_own_token_and_an_open_port() {
    let api = Api::new(4);
    let (a, token_a) = api.create(json!({"templateID": "base"})).await;
    let (b, token_b) = api
        .create(json!({"templateID": "code-interpreter-v1"}))
        .await;
    assert_ne!(token_a, token_b);
    let (status, body) = api.execute(&a, "49999", Some(&token_a)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""text":"42""#), "{body}");
    assert_eq!(
        api.execute(&a, "49999", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.execute(&a, "49999", Some(&token_b)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Other ports are the sandbox's own servers (none on WebAssembly).
    let (status, body) = api.execute(&a, "8080", Some(&token_a)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("port 8080"), "{body}");
    let (status, body) = api.execute("nosuchsandbox", "49999", Some(&token_a)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("was not found"), "{body}");

    // Killed: its traffic says so, its log stays readable.
    let (status, _) = api.control("DELETE", &format!("/sandboxes/{b}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.execute(&b, "49999", Some(&token_b)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("was not found") && body.contains("killed"),
        "{body}"
    );
    let (status, log) = api
        .control("GET", &format!("/v2/sandboxes/{b}/logs"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(log.contains("sandbox killed"), "{log}");
    let (status, log) = api
        .control("GET", &format!("/v2/sandboxes/{a}/logs?level=info"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        log.contains("code run") && !log.contains(r#""level":"debug""#),
        "{log}"
    );
}

/// A sandbox's own servers, named by host (`{port}-{id}.{domain}`): open to
/// anyone by default, only with the traffic token when the sandbox allows no
/// public traffic; the envd token is not the traffic token.
#[tokio::test]
async fn own_servers_are_named_by_host_and_private_ones_need_the_traffic_token() {
    let api = Api::new(4);
    let (status, text) = api
        .control(
            "POST",
            "/v2/sandboxes",
            r#"{"templateID": "base", "network": {"allowPublicTraffic": false}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let private: Value = serde_json::from_str(&text).unwrap();
    let (id, envd_token) = (
        private["sandboxID"].as_str().unwrap(),
        private["envdAccessToken"].as_str().unwrap(),
    );
    let traffic = private["trafficAccessToken"].as_str().unwrap();
    assert_ne!(traffic, envd_token);
    let (public, _) = api.create(json!({"templateID": "base"})).await;
    // Code runs with either token (E2B's code-interpreter SDK sends only the
    // traffic token for contexts), envd only with its own.
    let contexts = |token_header: &'static str, token: &str| {
        let request = Request::get("/contexts")
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", "49999")
            .header(token_header, token);
        api.call(request.body(Body::empty()).unwrap())
    };
    assert_eq!(
        contexts("x-access-token", envd_token).await.0,
        StatusCode::OK
    );
    let (status, body) = contexts("e2b-traffic-access-token", traffic).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        contexts("e2b-traffic-access-token", envd_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let get = |host: String, token: Option<&str>| {
        let mut request = Request::get("/").header("host", host);
        if let Some(token) = token {
            request = request.header("e2b-traffic-access-token", token);
        }
        api.call(request.body(Body::empty()).unwrap())
    };
    let host = format!("8080-{id}.localhost:49980");
    for token in [
        None,
        Some(envd_token),
        Some("0123456789abcdef0123456789abcdef"),
    ] {
        let (status, body) = get(host.clone(), token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token:?}: {body}");
    }
    // Past the token check, the WebAssembly sandbox has no servers.
    let (status, body) = get(host.clone(), Some(traffic)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("port 8080"), "{body}");
    let (status, body) = get(format!("8080-{public}.localhost:49980"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("port 8080"), "{body}");
    // envd by host still needs the envd token; an unknown sandbox is named.
    let (status, _) = get(format!("49983-{id}.localhost:49980"), Some(traffic)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = get("8080-nosuchsandbox.localhost".into(), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("was not found"), "{body}");
}

#[tokio::test]
async fn a_paused_sandbox_resumes_on_traffic_only_if_created_to() {
    let api = Api::new(4);
    let (plain, plain_token) = api.create(json!({"templateID": "base"})).await;
    let (eager, eager_token) = api
        .create(json!({"templateID": "base", "autoPause": true, "autoResume": {"enabled": true}}))
        .await;
    for id in [&plain, &eager] {
        let (status, body) = api
            .control("POST", &format!("/sandboxes/{id}/pause"), "")
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, _) = api
        .control("POST", &format!("/sandboxes/{plain}/pause"), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "paused already");
    let (status, body) = api.execute(&plain, "49999", Some(&plain_token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("paused"), "{body}");
    let (status, body) = api.execute(&eager, "49999", Some(&eager_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, info) = api.control("GET", &format!("/sandboxes/{eager}"), "").await;
    assert!(info.contains(r#""state":"running""#), "{info}");
    let (status, _) = api
        .control(
            "POST",
            &format!("/sandboxes/{plain}/connect"),
            r#"{"timeout": 30}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "resumed");
    let (status, _) = api
        .control("POST", &format!("/sandboxes/{plain}/connect"), "{}")
        .await;
    assert_eq!(status, StatusCode::OK, "already running");
    assert_eq!(
        api.execute(&plain, "49999", Some(&plain_token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_number_of_sandboxes_is_capped() {
    let api = Api::new(2);
    api.create(json!({"templateID": "base"})).await;
    let (last, _) = api.create(json!({"templateID": "base"})).await;
    let (status, text) = api
        .control("POST", "/sandboxes", r#"{"templateID": "base"}"#)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(text.contains("maximum of 2"), "{text}");
    api.control("DELETE", &format!("/sandboxes/{last}"), "")
        .await;
    let (status, text) = api
        .control("POST", "/sandboxes", r#"{"templateID": "base"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "room again: {text}");
}

#[tokio::test]
async fn forks_and_snapshots_are_checked_and_kept() {
    let dir = snapshot_dir("kept");
    let api = Api::with_snapshots(3, &dir);
    assert!(!dir.exists(), "made with the first snapshot, not before");
    let (parent, token) = api.create(json!({"templateID": "base"})).await;
    let fork = format!("/sandboxes/{parent}/fork");
    for body in [
        r#"{"count": 0}"#,
        r#"{"count": 21}"#,
        r#"{"timeout": 99999999}"#,
    ] {
        let (status, text) = api.control("POST", &fork, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
    }

    // Two forks fit beside the parent, the third does not: each says so.
    let (status, text) = api.control("POST", &fork, r#"{"count": 3}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let forks: Vec<Value> = serde_json::from_str(&text).unwrap();
    let started: Vec<_> = forks.iter().filter(|f| f["sandbox"].is_object()).collect();
    let refused: Vec<_> = forks.iter().filter(|f| f["error"].is_object()).collect();
    assert_eq!((started.len(), refused.len()), (2, 1), "{text}");
    assert_eq!(refused[0]["error"]["code"], 429, "{text}");
    for started in started {
        let id = started["sandbox"]["sandboxID"].as_str().unwrap();
        assert_ne!(started["sandbox"]["envdAccessToken"], token.as_str());
        api.control("DELETE", &format!("/sandboxes/{id}"), "").await;
    }

    let take = format!("/sandboxes/{parent}/snapshots");
    let (status, text) = api.control("POST", &take, r#"{"name": "../up"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = api.control("POST", &take, "{}").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let unnamed: Value = serde_json::from_str(&text).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the snapshot folder is private");
    assert!(
        unnamed["snapshotID"]
            .as_str()
            .unwrap()
            .ends_with(":default"),
        "{text}"
    );
    assert_eq!(unnamed["names"], json!([]));
    let (status, text) = api.control("POST", &take, r#"{"name": "mine"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"snapshotID": "mine:default", "names": ["mine:default"]})
    );
    let (_, text) = api.control("POST", &take, r#"{"name": "mine"}"#).await;
    assert!(
        text.contains("mine:default"),
        "the name moves to the new one: {text}"
    );

    let (status, text) = api
        .control("GET", &format!("/snapshots?sandboxID={parent}&limit=1"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&text).unwrap().len(), 1);
    let (_, text) = api.control("GET", "/snapshots", "").await;
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&text).unwrap().len(),
        2,
        "{text}"
    );
    let (_, text) = api.control("GET", "/snapshots?sandboxID=other", "").await;
    assert_eq!(text, "[]");

    for template in ["mine", "mine:default", "team/mine:default"] {
        let (status, text) = api
            .control(
                "POST",
                "/sandboxes",
                &json!({"templateID": template}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{template}: {text}");
        let id = serde_json::from_str::<Value>(&text).unwrap()["sandboxID"].clone();
        api.control(
            "DELETE",
            &format!("/sandboxes/{}", id.as_str().unwrap()),
            "",
        )
        .await;
    }
    let (status, _) = api
        .control("POST", "/sandboxes", r#"{"templateID": "mine:v2"}"#)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Paused sandboxes are not snapshotted behind their back.
    api.control("POST", &format!("/sandboxes/{parent}/pause"), "")
        .await;
    assert_eq!(
        api.control("POST", &take, "{}").await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.control("POST", &fork, "{}").await.0,
        StatusCode::CONFLICT
    );

    // Snapshots outlive the server.
    drop(api);
    let again = Api::with_snapshots(3, &dir);
    let (_, text) = again.control("GET", "/snapshots", "").await;
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&text).unwrap().len(),
        2,
        "{text}"
    );
    assert_eq!(
        again.control("DELETE", "/templates/base", "").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        again
            .control("DELETE", "/templates/mine:default", "")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        again.control("DELETE", "/templates/mine", "").await.0,
        StatusCode::NOT_FOUND
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn secrets_signed_urls_and_list_filters_refuse_misuse() {
    let api = Api::new(4);
    // Secrets: a value never comes back; bad names, huge values, duplicates
    // and unknown ids are refused without harm; no key, no secrets.
    let (status, made) = api
        .control("POST", "/secrets", r#"{"name": "k", "value": "hunter2"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let no_key = Request::get("/secrets").body(Body::empty()).unwrap();
    assert_eq!(api.call(no_key).await.0, StatusCode::UNAUTHORIZED);
    let huge = json!({"name": "big", "value": "x".repeat(70_000)}).to_string();
    for (body, status) in [
        (r#"{"name": "k", "value": "again"}"#, StatusCode::CONFLICT),
        (r#"{"name": "a}b", "value": "v"}"#, StatusCode::BAD_REQUEST),
        (r#"{"name": "", "value": "v"}"#, StatusCode::BAD_REQUEST),
        (r#"{"name": "n"}"#, StatusCode::BAD_REQUEST),
        (huge.as_str(), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(
            api.control("POST", "/secrets", body).await.0,
            status,
            "{body:.60}"
        );
    }
    for (method, path) in [("GET", "/secrets/none"), ("DELETE", "/secrets/none")] {
        assert_eq!(api.control(method, path, "").await.0, StatusCode::NOT_FOUND);
    }
    let (_, listed) = api.control("GET", "/secrets", "").await;
    let (_, one) = api.control("GET", "/secrets/k", "").await;
    assert!(
        !listed.contains("hunter2") && !one.contains("hunter2") && !made.contains("hunter2"),
        "{listed} {one} {made}"
    );

    // A signed file URL that no sandbox's token made, or an expired one, is
    // refused as E2B refuses it; without a signature it is the control plane's.
    api.create(json!({"templateID": "base"})).await;
    let signed = |query: &str| {
        Request::get(format!("/files?{query}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, text) = api
        .call(signed("path=/etc/passwd&username=root&signature=v1_forged"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("invalid signature"), "{text}");
    let (status, text) = api
        .call(signed("path=a&signature=v1_x&signature_expiration=1"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("signature is already expired"), "{text}");
    assert_eq!(api.call(signed("path=a")).await.0, StatusCode::UNAUTHORIZED);

    // List filters that are not what they claim are a 400, not a panic.
    for query in [
        "order=sideways",
        "startedAfter=yesterday",
        "startedAfter=2026-13-40T00:00:00Z",
    ] {
        let (status, text) = api
            .control("GET", &format!("/v2/sandboxes?{query}"), "")
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
    }
    let (status, text) = api
        .control("GET", "/v2/sandboxes?template=unknown&order=asc", "")
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "[]"));
}

/// Volumes: the control plane with the API key, the content API with the
/// volume's own token only; paths and names checked; a volume is mounted on
/// the namespace backend only.
#[tokio::test]
async fn volumes_need_their_own_token_and_keep_to_themselves() {
    let dir = snapshot_dir("volumes");
    let api = Api::with_snapshots(4, &dir);
    let created = |name: &str| {
        let body = json!({ "name": name }).to_string();
        let api = &api;
        async move { api.control("POST", "/volumes", &body).await }
    };
    let (status, text) = created("scratch").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let scratch: Value = serde_json::from_str(&text).unwrap();
    let (id, token) = (
        scratch["volumeID"].as_str().unwrap(),
        scratch["token"].as_str().unwrap(),
    );
    let (_, text) = created("other").await;
    let other: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created("scratch").await.0, StatusCode::CONFLICT);
    assert_eq!(created("no/slashes").await.0, StatusCode::BAD_REQUEST);
    let content = |method: &str, route: &str, token: &str, body: &'static str| {
        let request = Request::builder()
            .method(method)
            .uri(format!("/volumecontent/{id}/{route}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body))
            .unwrap();
        api.call(request)
    };
    let other_token = other["token"].as_str().unwrap();
    for wrong in [other_token, "nonsense", ""] {
        let (status, _) = content("PUT", "file?path=/a.txt", wrong, "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let (status, text) = content("PUT", "file?path=/a.txt&mode=384", token, "hello").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let stat: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (stat["size"].as_i64(), stat["mode"].as_u64()),
        (Some(5), Some(0o600))
    );
    assert_eq!(
        content("GET", "file?path=/a.txt", token, "").await.1,
        "hello"
    );
    let (status, _) = content("PUT", "file?path=/missing/a.txt", token, "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = content("POST", "dir?path=/deep/er&force=true", token, "").await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, listing) = content("GET", "dir?path=/&depth=2", token, "").await;
    let paths: Vec<String> = serde_json::from_str::<Vec<Value>>(&listing)
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/a.txt", "/deep", "/deep/er"], "{listing}");
    // `..` stays inside the volume.
    let (status, _) = content("GET", "file?path=/../../../../etc/hostname", token, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = content("DELETE", "path?path=/deep", token, "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = content("GET", "path?path=/deep/er", token, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Mounting: names and paths checked, and the WebAssembly backend refused.
    for (mounts, status) in [
        (
            json!([{"name": "nope", "path": "/data"}]),
            StatusCode::NOT_FOUND,
        ),
        (
            json!([{"name": "scratch", "path": "/proc/x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "scratch", "path": "relative"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "scratch", "path": "/data"}]),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let body = json!({"templateID": "base", "volumeMounts": mounts}).to_string();
        let (got, text) = api.control("POST", "/v2/sandboxes", &body).await;
        assert_eq!(got, status, "{mounts}: {text}");
    }
    let (status, _) = api.control("DELETE", &format!("/volumes/{id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = content("GET", "file?path=/a.txt", token, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _ = std::fs::remove_dir_all(volume_dir(&dir));
}
