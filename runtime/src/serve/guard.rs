//! Who may use `cellbox serve`: this machine's own programs, not the web
//! pages its user opens.
//!
//! - Without an access token, the `Host` header must name loopback
//!   (`localhost` or a name under it, `127.0.0.1`, `[::1]`), the bound
//!   address or an allowed host (or a name under it): a page whose DNS name
//!   was rebound to 127.0.0.1 still sends its own.
//! - A page a sandbox serves (`http://8000-{id}.localhost:49980`) is an
//!   origin of its own: it may call its own server, nothing else here.
//! - A request a browser sent for another site's page (`Origin`, or
//!   `Sec-Fetch-Site: cross-site`/`same-site`) is refused unless its origin is
//!   allowed; allowed origins also get CORS answers (preflight included). A
//!   "simple" cross-origin POST needs no preflight, so refusing it is what
//!   stops it, not CORS.
//! - With an access token, every request but `GET /health` must carry it in
//!   `X-Access-Token`, as E2B's envd requires for secured sandboxes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::error::{Error, Result};

/// Who may call the API beyond this machine's own programs.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required in `X-Access-Token` on every request but `GET /health`.
    pub token: Option<String>,
    /// Web origins (`http://localhost:3000`) whose pages may call the API.
    pub allowed_origins: Vec<String>,
    /// Host names, beyond loopback and the bound address, that requests may
    /// name in `Host` (a name this machine is reached by).
    pub allowed_hosts: Vec<String>,
}

impl Access {
    /// A new random access token (128 bits from the kernel, hex).
    pub fn generate_token() -> Result<String> {
        let bytes: [u8; 16] = super::random_bytes("an access token")?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Refuses a configuration that would open the API to the network: an
    /// address beyond loopback needs a token.
    pub fn check_bind(&self, bind: IpAddr) -> Result<()> {
        if bind.is_loopback() || self.token.is_some() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "listening on {bind} would let anyone on the network run code: give an access token \
             (--access-token, or --secure to generate one), or keep to loopback"
        )))
    }
}

#[derive(Debug)]
struct Guard {
    access: Access,
    bind: IpAddr,
}

/// `router` behind the checks above, for a server bound to `bind`.
pub fn guard(router: Router, access: &Access, bind: IpAddr) -> Router {
    let origins: Vec<HeaderValue> = access
        .allowed_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request());
    let state = Arc::new(Guard {
        access: access.clone(),
        bind,
    });
    router
        .layer(middleware::from_fn_with_state(state, check))
        .layer(cors)
}

async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    // With a token, a rebound DNS name gains nothing: the page lacks it.
    if guard.access.token.is_none()
        && let Some(host) = headers.get(header::HOST)
        && !guard.allows_host(host)
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only requests addressed to localhost or its own address (Host)",
        );
    }
    if let Some(origin) = guard.foreign_origin(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("requests from web pages of {origin} are not allowed (see --allow-origin)"),
        );
    }
    let health = request.uri().path() == "/health";
    if let Some(token) = &guard.access.token
        && !health
        && !same_token(headers.get("x-access-token"), token)
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a valid X-Access-Token header is required",
        );
    }
    next.run(request).await
}

impl Guard {
    fn allows_host(&self, host: &HeaderValue) -> bool {
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = strip_port(host).to_ascii_lowercase();
        let is_or_under = |domain: &str| {
            let domain = domain.to_ascii_lowercase();
            name == domain
                || name
                    .strip_suffix(&domain)
                    .is_some_and(|sub| sub.ends_with('.'))
        };
        if is_or_under("localhost") || self.access.allowed_hosts.iter().any(|h| is_or_under(h)) {
            return true;
        }
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        literal
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == self.bind)
    }

    /// The origin of a browser request from another site's page, if it is
    /// not allowed.
    fn foreign_origin(&self, headers: &HeaderMap) -> Option<String> {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if let Some(origin) = origin
            && self.access.allowed_origins.iter().any(|o| o == origin)
        {
            return None;
        }
        let site = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok());
        let cross_site = matches!(site, Some("cross-site" | "same-site"));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match origin {
            // Browsers send "null" from sandboxed frames and files.
            Some(origin) if cross_site || !self.is_own_origin(origin, host) => {
                Some(origin.to_string())
            }
            None if cross_site => Some("another site".to_string()),
            _ => None,
        }
    }

    /// Whether `origin` is the page's own server (`host`, a sandbox's
    /// server serving its own pages), or this server (it serves no pages: no
    /// attack), not a sandbox's page calling anything else.
    fn is_own_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let Some(rest) = origin.strip_prefix("http://") else {
            return false;
        };
        if rest.contains('/') || !HeaderValue::from_str(rest).is_ok_and(|h| self.allows_host(&h)) {
            return false;
        }
        host.is_some_and(|host| host.eq_ignore_ascii_case(rest))
            || super::ports::named_by_host(rest).is_none()
    }
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.split_once(':') {
        Some((name, _port)) => name,
        None => host,
    }
}

/// Whether the header `given` is `token`, compared in constant time.
pub(crate) fn same_token(given: Option<&HeaderValue>, token: &str) -> bool {
    given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

/// Compares secrets in time independent of where the first difference is.
pub(crate) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::warn!(%status, "refused a request: {message}");
    (status, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(access: Access) -> Guard {
        Guard {
            access,
            bind: IpAddr::from([127, 0, 0, 1]),
        }
    }

    fn host(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn only_names_of_this_machine_are_accepted_as_host() {
        let g = guard(Access {
            allowed_hosts: vec!["box.internal".into()],
            ..Access::default()
        });
        for ok in [
            "localhost:49999",
            "LOCALHOST",
            "127.0.0.1:49983",
            "127.9.9.9",
            "[::1]:49999",
            "[::1]",
            "box.internal:1",
            "8000-abc123.localhost:49980",
            "8000-abc123.box.internal",
        ] {
            assert!(g.allows_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:49999",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:1",
            "127.0.0.1.nip.io",
            "evillocalhost",
            "evilbox.internal",
            "",
        ] {
            assert!(!g.allows_host(&host(bad)), "{bad}");
        }
    }

    #[test]
    fn browser_requests_from_other_sites_are_foreign_unless_allowed() {
        let g = guard(Access {
            allowed_origins: vec!["http://localhost:3000".into()],
            ..Access::default()
        });
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        assert_eq!(
            g.foreign_origin(&headers(&[])),
            None,
            "an SDK sends no Origin"
        );
        assert!(
            g.foreign_origin(&headers(&[("origin", "https://evil.example")]))
                .is_some()
        );
        assert!(g.foreign_origin(&headers(&[("origin", "null")])).is_some());
        assert!(
            g.foreign_origin(&headers(&[("sec-fetch-site", "cross-site")]))
                .is_some()
        );
        assert_eq!(
            g.foreign_origin(&headers(&[("origin", "http://localhost:3000")])),
            None
        );
        assert_eq!(
            g.foreign_origin(&headers(&[
                ("origin", "http://localhost:49999"),
                ("sec-fetch-site", "same-origin")
            ])),
            None
        );
        // A sandbox's page calls its own server, and nothing else.
        let page = "http://8000-abc123.localhost:49980";
        let own = headers(&[("origin", page), ("host", "8000-abc123.localhost:49980")]);
        assert_eq!(g.foreign_origin(&own), None);
        for elsewhere in [
            "localhost:49980",
            "8000-other1.localhost:49980",
            "8001-abc123.localhost:49980",
        ] {
            let mut call = headers(&[("origin", page)]);
            call.insert("host", HeaderValue::from_str(elsewhere).unwrap());
            assert!(g.foreign_origin(&call).is_some(), "{elsewhere}");
        }
    }

    #[test]
    fn tokens_must_match_exactly_and_only_loopback_goes_without_one() {
        assert!(same_token(Some(&host("abc")), "abc"));
        assert!(!same_token(Some(&host("abd")), "abc"));
        assert!(!same_token(Some(&host("abcd")), "abc"));
        assert!(!same_token(None, "abc"));
        let open = Access::default();
        assert!(open.check_bind(IpAddr::from([127, 0, 0, 1])).is_ok());
        assert!(open.check_bind(IpAddr::from([0, 0, 0, 0])).is_err());
        let token = Access::generate_token().unwrap();
        assert_eq!(token.len(), 32);
        assert_ne!(token, Access::generate_token().unwrap());
        let secured = Access {
            token: Some(token),
            ..Access::default()
        };
        assert!(secured.check_bind(IpAddr::from([0, 0, 0, 0])).is_ok());
    }
}
