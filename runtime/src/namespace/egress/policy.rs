//! What the egress proxy lets through and what it adds, compiled from a
//! [`NetworkPolicy`]: E2B's rules, first match wins.
//!
//! - A host name (HTTP `Host`, TLS SNI) that `allow_out` names, exactly or
//!   by a `*.` wildcard (any name under it), is allowed wherever it resolves,
//!   but to loopback, the host's own addresses and link-local ones (unless
//!   `allow_out` names those addresses): a name under a wildcard may be
//!   anyone's, and resolve anywhere.
//! - Otherwise the address decides: the one the name resolves to on the
//!   host (never the one the sandbox dialled: its own DNS answers do not
//!   count), or the address itself when the sandbox named none; `allow_out`
//!   blocks allow, then `deny_out`, the host's own addresses and link-local
//!   ones refuse, then the rest goes with `allow_internet_access`.
//! - A request to a host that `rules` names gets that rule's headers, with
//!   `${e2b.secrets.NAME}` placeholders filled from the secrets only here,
//!   as the request leaves.

use std::net::IpAddr;

use hyper::header::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::super::network::{EgressRules, NetworkPolicy, SecretSource};

/// A host in `allow_out` or a rule's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// That name only.
    Exact(String),
    /// Any name under this one (`*.example.com`: not `example.com` itself).
    Under(String),
    /// An address or block, for hosts named by address.
    Net(IpNet),
}

impl HostPattern {
    /// `entry` as a pattern (checked by `NetworkPolicy::check` first).
    pub(crate) fn parse(entry: &str) -> Option<HostPattern> {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Some(HostPattern::Net(net.trunc()));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Some(HostPattern::Net(IpNet::from(ip)));
        }
        match entry.strip_prefix("*.") {
            Some(parent) if crate::tls::valid_name(parent) => {
                Some(HostPattern::Under(parent.to_owned()))
            }
            None if crate::tls::valid_name(&entry) => Some(HostPattern::Exact(entry)),
            _ => None,
        }
    }

    /// Whether `host` (lower case, an address if the request named one) matches.
    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Under(parent) => host
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Net(net) => host.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
        }
    }
}

/// A header a rule sets, its value still holding placeholders.
#[derive(Debug, Clone)]
struct SetHeader {
    name: HeaderName,
    value: String,
}

/// The proxy's view of a sandbox's [`NetworkPolicy`].
#[derive(Debug)]
pub struct EgressPolicy {
    allow_names: Vec<HostPattern>,
    /// `allow_out`'s addresses and blocks (not its names' addresses: here
    /// names count by name).
    allow_nets: Vec<IpNet>,
    /// The host's own addresses and link-local ones.
    internal: Vec<IpNet>,
    addresses: EgressRules,
    rules: Vec<(HostPattern, Vec<SetHeader>)>,
    secrets: Option<SecretSource>,
}

/// The placeholder E2B's `Secret.fill(name)` writes.
const SECRET_PLACEHOLDER: &str = "${e2b.secrets.";
/// E2B's workload identity placeholders (not supported here).
const IDENTITY_PLACEHOLDER: &str = "${e2b.identity.";

impl EgressPolicy {
    /// `policy` (already checked) with its address sets `addresses`.
    pub fn new(policy: &NetworkPolicy, addresses: EgressRules) -> EgressPolicy {
        let patterns = |entries: &[String]| -> Vec<HostPattern> {
            entries
                .iter()
                .filter_map(|e| HostPattern::parse(e))
                .collect()
        };
        let (nets, allow_names): (Vec<_>, Vec<_>) = patterns(&policy.allow_out)
            .into_iter()
            .partition(|p| matches!(p, HostPattern::Net(_)));
        let allow_nets = nets
            .into_iter()
            .filter_map(|p| match p {
                HostPattern::Net(net) => Some(net),
                _ => None,
            })
            .collect();
        let rules = policy
            .rules
            .iter()
            .filter_map(|(host, rules)| {
                let headers = rules
                    .iter()
                    .flat_map(|rule| &rule.headers)
                    .filter_map(|(name, value)| {
                        Some(SetHeader {
                            name: HeaderName::from_bytes(name.as_bytes()).ok()?,
                            value: value.clone(),
                        })
                    })
                    .collect();
                Some((HostPattern::parse(host)?, headers))
            })
            .collect();
        EgressPolicy {
            allow_names,
            allow_nets,
            internal: super::super::network::always_denied(),
            addresses,
            rules,
            secrets: policy.secrets.clone(),
        }
    }

    /// Whether a connection to `address` may be made for `host` (a name the
    /// sandbox asked for, `None` if it named none).
    pub fn admits(&self, host: Option<&str>, address: IpAddr) -> bool {
        if address.is_loopback() || address.is_unspecified() || address.is_multicast() {
            return false;
        }
        if self.allow_nets.iter().any(|net| net.contains(&address)) {
            return true;
        }
        if self.internal.iter().any(|net| net.contains(&address)) {
            return false;
        }
        if host.is_some_and(|host| self.allows_name(host)) {
            return true;
        }
        if self.addresses.deny.iter().any(|net| net.contains(&address)) {
            return false;
        }
        self.addresses.allow_rest
    }

    /// Whether `name` is allowed by name (`allow_out`, wildcards included).
    pub fn allows_name(&self, name: &str) -> bool {
        self.allow_names.iter().any(|p| p.matches(name))
    }

    /// Whether requests to `host` are changed by a rule (so that its TLS
    /// must be opened here).
    pub fn changes(&self, host: &str) -> bool {
        self.rules.iter().any(|(pattern, _)| pattern.matches(host))
    }

    /// The headers the rules for `host` set, placeholders filled; an error
    /// (for the sandbox's client to read) when one cannot be.
    pub fn headers_for(&self, host: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let mut headers = Vec::new();
        for (_, set) in self.rules.iter().filter(|(p, _)| p.matches(host)) {
            for header in set {
                let value = self.fill(&header.value)?;
                let value = HeaderValue::from_str(&value).map_err(|_| {
                    format!(
                        "the value of header {} is not a valid header value",
                        header.name
                    )
                })?;
                headers.push((header.name.clone(), value));
            }
        }
        Ok(headers)
    }

    /// `value` with each `${e2b.secrets.NAME}` replaced by that secret.
    fn fill(&self, value: &str) -> Result<String, String> {
        if value.contains(IDENTITY_PLACEHOLDER) {
            return Err("workload identity tokens (${e2b.identity...}) are not supported".into());
        }
        let mut filled = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find(SECRET_PLACEHOLDER) {
            filled.push_str(&rest[..start]);
            let after = &rest[start + SECRET_PLACEHOLDER.len()..];
            let end = after
                .find('}')
                .ok_or("a secret placeholder is not closed with `}`")?;
            let name = &after[..end];
            let secret = self
                .secrets
                .as_ref()
                .and_then(|secrets| secrets.value(name))
                .ok_or_else(|| format!("no secret named `{name}`"))?;
            filled.push_str(&secret);
            rest = &after[end + 1..];
        }
        filled.push_str(rest);
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::namespace::network::HostRule;

    fn policy(allow: &[&str], deny: &[&str], internet: bool) -> EgressPolicy {
        let policy = NetworkPolicy {
            allow_internet_access: internet,
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        policy.check().unwrap();
        let addresses = policy.resolve().unwrap();
        EgressPolicy::new(&policy, addresses)
    }

    #[test]
    fn patterns_match_names_wildcards_and_blocks() {
        let exact = HostPattern::parse("API.example.com.").unwrap();
        assert!(exact.matches("api.example.com") && !exact.matches("x.api.example.com"));
        let under = HostPattern::parse("*.example.com").unwrap();
        assert!(under.matches("a.example.com") && under.matches("a.b.example.com"));
        for other in [
            "example.com",
            "evilexample.com",
            ".example.com",
            "example.com.evil",
        ] {
            assert!(!under.matches(other), "{other}");
        }
        let net = HostPattern::parse("198.51.100.0/24").unwrap();
        assert!(net.matches("198.51.100.7") && !net.matches("198.51.101.7"));
        assert!(HostPattern::parse("*.").is_none() && HostPattern::parse("a b").is_none());
    }

    #[test]
    fn names_allowed_by_name_others_by_their_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let only = policy(
            &["*.allowed.test", "localhost", "203.0.113.9"],
            &["0.0.0.0/0"],
            true,
        );
        assert!(
            !only.admits(None, ip("127.0.0.1")),
            "a name's addresses count by name only"
        );
        assert!(only.admits(Some("api.allowed.test"), ip("198.51.100.1")));
        assert!(!only.admits(Some("other.test"), ip("198.51.100.1")));
        assert!(!only.admits(None, ip("198.51.100.1")), "an address alone");
        assert!(
            only.admits(Some("other.test"), ip("203.0.113.9")),
            "allowed by address"
        );
        assert!(
            !only.admits(Some("api.allowed.test"), ip("127.0.0.1")),
            "never loopback"
        );
        let open = policy(&[], &["198.51.100.2"], true);
        assert!(open.admits(Some("any.test"), ip("198.51.100.1")));
        assert!(!open.admits(Some("any.test"), ip("198.51.100.2")));
        assert!(
            !open.admits(None, ip("169.254.169.254")),
            "link-local (metadata)"
        );
        let closed = policy(&["allowed.test"], &[], false);
        assert!(!closed.admits(Some("other.test"), ip("198.51.100.1")));
    }

    #[test]
    fn rule_headers_are_filled_with_secrets_only_here() {
        let secrets = SecretSource::new(Arc::new(|name: &str| {
            (name == "token").then(|| "s3cr3t".to_owned())
        }));
        let rule = |value: &str| HostRule {
            headers: BTreeMap::from([("Authorization".to_owned(), value.to_owned())]),
        };
        let policy = |value: &str| {
            let policy = NetworkPolicy {
                allow_internet_access: true,
                rules: BTreeMap::from([("*.api.test".to_owned(), vec![rule(value)])]),
                secrets: Some(secrets.clone()),
                ..Default::default()
            };
            policy.check().unwrap();
            EgressPolicy::new(&policy, policy.resolve().unwrap())
        };
        let filled = policy("Bearer ${e2b.secrets.token}!");
        assert!(filled.changes("v1.api.test") && !filled.changes("api.test"));
        let headers = filled.headers_for("v1.api.test").unwrap();
        assert_eq!(headers[0].0, "authorization");
        assert_eq!(headers[0].1, "Bearer s3cr3t!");
        assert!(filled.headers_for("other.test").unwrap().is_empty());
        let missing = policy("${e2b.secrets.other}").headers_for("v1.api.test");
        assert!(missing.unwrap_err().contains("`other`"));
        let open = policy("${e2b.secrets.token").headers_for("v1.api.test");
        assert!(open.unwrap_err().contains("not closed"));
        let identity = policy("${e2b.identity.tokens.aws}").headers_for("v1.api.test");
        assert!(identity.unwrap_err().contains("not supported"));
    }
}
