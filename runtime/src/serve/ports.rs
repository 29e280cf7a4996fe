//! Servers started in a sandbox, reached through the API port as E2B's
//! `get_host(port)` names them: `{port}-{sandbox id}.{domain}` in `Host`
//! (the domain is `localhost:{api port}` unless `--sandbox-domain` says
//! otherwise), or E2B's routing headers. Each request travels to the port
//! through the guest's own channel ([`crate::Sandbox::open_port`]), so a
//! sandbox without network is reached too and nothing else on the host can
//! reach it; WebSocket and other upgrades are passed on both ways.
//!
//! With `maskRequestHost` the server sees that `Host` (`${PORT}` replaced by
//! the port's number) instead of the one the request came with.
//!
//! A sandbox created with `allowPublicTraffic: false` answers only requests
//! carrying its traffic token (`E2B-Traffic-Access-Token`); neither that nor
//! the envd token is passed on to the server in the sandbox.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use super::fleet::Entry;
use crate::error::Error;

/// The header E2B's proxy reads a private sandbox's traffic token from.
pub const TRAFFIC_TOKEN: &str = "e2b-traffic-access-token";

/// Credentials for cellbox itself, never passed on to a sandbox's server.
const CREDENTIALS: [&str; 3] = [TRAFFIC_TOKEN, "x-access-token", "x-api-key"];

/// The port and sandbox id a `Host` names (`8000-abc123.localhost:49980`).
pub fn named_by_host(host: &str) -> Option<(u16, &str)> {
    let (first, _domain) = host.split_once('.')?;
    let (port, id) = first.split_once('-')?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let id_like = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    (digits && id_like).then_some(())?;
    Some((port.parse().ok()?, id))
}

/// Whether `request` may reach `entry`'s own servers.
pub fn admits(entry: &Entry, request: &Request) -> bool {
    entry.spec.public_traffic || carries_traffic_token(entry, request)
}

/// Whether `request` carries `entry`'s traffic token.
pub fn carries_traffic_token(entry: &Entry, request: &Request) -> bool {
    super::guard::same_token(request.headers().get(TRAFFIC_TOKEN), &entry.traffic_token)
}

/// Passes `request` on to the server listening on `port` in `entry`'s
/// sandbox, and its answer back.
pub async fn forward(entry: &Entry, port: u16, mut request: Request) -> Response {
    let stream = match entry.sandbox.open_port(port).await {
        Ok(stream) => stream,
        Err(Error::NotFound(_)) => return not_open(&entry.id, port),
        Err(e) => return bad_gateway(&entry.id, port, &e.to_string()),
    };
    for name in CREDENTIALS {
        request.headers_mut().remove(HeaderName::from_static(name));
    }
    let mask = entry.spec.mask_request_host.as_ref();
    if let Some(Ok(host)) = mask.map(|m| m.replace("${PORT}", &port.to_string()).try_into()) {
        request.headers_mut().insert(axum::http::header::HOST, host);
    }
    match crate::relay::relay(stream, request).await {
        Ok(response) => response.map(Body::new),
        Err(e) => bad_gateway(&entry.id, port, &e.to_string()),
    }
}

/// E2B's answer for a port nothing listens on.
fn not_open(id: &str, port: u16) -> Response {
    let body = serde_json::json!({
        "message": "The sandbox is running but port is not open",
        "sandboxId": id,
        "port": port,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

fn bad_gateway(id: &str, port: u16, why: &str) -> Response {
    let message = format!("sandbox {id}: port {port} could not be reached: {why}");
    (StatusCode::BAD_GATEWAY, message).into_response()
}

/// A request without the traffic token of a private sandbox (E2B: 403).
pub fn refused(id: &str) -> Response {
    let message = format!(
        "sandbox {id} does not allow public traffic: an {TRAFFIC_TOKEN} header with its traffic \
         access token is required"
    );
    (StatusCode::FORBIDDEN, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_a_port_and_a_sandbox() {
        let id = "abc123";
        assert_eq!(
            named_by_host("8000-abc123.localhost:49980"),
            Some((8000, id))
        );
        assert_eq!(
            named_by_host("49983-abc123.sandboxes.example"),
            Some((49983, id))
        );
        for other in [
            "localhost:49980",
            "127.0.0.1:49980",
            "8000-abc123",
            "x8000-abc123.localhost",
            "8000-.localhost",
            "-abc123.localhost",
            "99999-abc123.localhost",
            "8000-abc_123.localhost",
            "8000-abc-123.localhost",
        ] {
            assert_eq!(named_by_host(other), None, "{other}");
        }
    }
}
