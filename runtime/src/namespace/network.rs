//! A namespace sandbox's network. Without [`NetworkPolicy`] options it has
//! loopback only. With them, slirp4netns (user-mode networking, Debian's
//! `slirp4netns`) gives it a `tap0` whose traffic leaves through the host's
//! sockets, and nftables rules in its network namespace decide what it may
//! reach. That namespace belongs to the host's user namespace (the launcher
//! made it, `guest-init/src/launch.rs`), so the sandbox's root cannot change
//! the rules.
//!
//! Rules, first match wins: loopback and the DNS forwarder (10.0.2.3) are
//! allowed; then `allow_out`; then `deny_out`, the host's own addresses and
//! link-local addresses (cloud metadata services live there) are refused;
//! then everything else is allowed with `allow_internet_access`, refused
//! without. Domain names in `allow_out` are resolved when the sandbox starts.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::egress::{EgressPolicy, EgressProxy};
use crate::error::{Error, Result};

/// What a sandbox may reach on the network; the default is nothing.
/// `allow_internet_access`, `allow_out`/`deny_out` and `rules` are E2B's
/// options. HTTP (port 80) and TLS (port 443) go through the sandbox's
/// egress proxy, which decides by the host name the request or handshake
/// names (`namespace::egress`); other ports by address only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Reach everything but `deny_out` (and the host itself).
    pub allow_internet_access: bool,
    /// Addresses, CIDR blocks, host names or `*.name` wildcards always
    /// reachable, even those `deny_out` covers; without
    /// `allow_internet_access`, the only ones. Names count by name on
    /// ports 80 and 443, by the addresses they resolve to when the sandbox
    /// starts elsewhere (wildcards: on 80 and 443 only).
    pub allow_out: Vec<String>,
    /// Addresses or CIDR blocks never reachable (unless in `allow_out`).
    pub deny_out: Vec<String>,
    /// Headers set on the sandbox's HTTP and HTTPS requests to a host (a
    /// name, `*.name` or an address, as in `allow_out`), E2B's per-host
    /// `rules`; values may hold `${e2b.secrets.NAME}` placeholders, filled
    /// from [`NetworkPolicy::secrets`] as the request leaves. Rules allow
    /// nothing by themselves.
    pub rules: BTreeMap<String, Vec<HostRule>>,
    /// Where placeholders' secrets come from (none: a placeholder fails the
    /// request that needs it).
    pub secrets: Option<SecretSource>,
}

/// One rule of [`NetworkPolicy::rules`]: E2B's `{"transform": {"headers"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRule {
    /// Headers set (replacing the request's own of the same name).
    pub headers: BTreeMap<String, String>,
}

/// A secret's value by its name.
pub type SecretLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Secret values by name, asked for only when a request needs one.
#[derive(Clone)]
pub struct SecretSource(std::sync::Arc<SecretLookup>);

impl SecretSource {
    /// Secrets from `lookup` (name to value).
    pub fn new(lookup: std::sync::Arc<SecretLookup>) -> Self {
        SecretSource(lookup)
    }

    /// The secret named `name`.
    pub fn value(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSource(<secrets>)")
    }
}

impl PartialEq for SecretSource {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SecretSource {}

impl NetworkPolicy {
    /// Internet access, less `deny_out`.
    pub fn internet() -> Self {
        NetworkPolicy {
            allow_internet_access: true,
            ..Default::default()
        }
    }

    /// Whether the sandbox gets a network at all.
    pub fn enabled(&self) -> bool {
        self.allow_internet_access || !self.allow_out.is_empty()
    }

    /// Whether some rule works by host name only (header rules, `*.`
    /// wildcards): the namespace sandbox's egress proxy is needed.
    pub fn by_host_name(&self) -> bool {
        !self.rules.is_empty() || self.allow_out.iter().any(|e| e.trim().starts_with("*."))
    }

    /// Checks every entry's form (without looking names up).
    pub fn check(&self) -> Result<()> {
        for entry in &self.allow_out {
            parse_entry(entry, true)?;
        }
        for entry in &self.deny_out {
            parse_entry(entry, false)?;
        }
        for (host, rules) in &self.rules {
            parse_entry(host, true)?;
            for (name, value) in rules.iter().flat_map(|rule| &rule.headers) {
                let bad_name = hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err();
                if bad_name || value.chars().any(char::is_control) {
                    return Err(invalid(
                        host,
                        &format!("header `{name}` is not a valid header"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rules as addresses: entries checked, domain names resolved.
    /// Blocking (name lookups).
    pub fn resolve(&self) -> Result<EgressRules> {
        let mut allow = Vec::new();
        for entry in &self.allow_out {
            allow.extend(match parse_entry(entry, true)? {
                Entry::Net(net) => vec![net],
                // Not found now: on ports 80 and 443 the name still counts.
                Entry::Name(name) => resolve_name(name).unwrap_or_default(),
                Entry::Wildcard => Vec::new(),
            });
        }
        let mut deny = Vec::new();
        for entry in &self.deny_out {
            if let Entry::Net(net) = parse_entry(entry, false)? {
                deny.push(net);
            }
        }
        deny.extend(always_denied());
        Ok(EgressRules {
            allow,
            deny,
            allow_rest: self.allow_internet_access,
        })
    }
}

/// One `allow_out`/`deny_out` entry.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    Net(IpNet),
    Name(&'a str),
    /// `*.name`.
    Wildcard,
}

fn invalid(entry: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("network rule `{entry}`: {why}"))
}

/// An address, a CIDR block or (when `names` is true) a domain name.
fn parse_entry(entry: &str, names: bool) -> Result<Entry<'_>> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(Entry::Net(net.trunc()));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Entry::Net(IpNet::from(ip)));
    }
    if entry.contains('/') || entry.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(invalid(entry, "not an address or CIDR block"));
    }
    if !names {
        return Err(invalid(
            entry,
            "only addresses and CIDR blocks can be denied",
        ));
    }
    let (wildcard, name) = match entry.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, entry),
    };
    if name.is_empty() || !crate::tls::valid_name(name) {
        return Err(invalid(entry, "not an address, CIDR block or domain name"));
    }
    Ok(if wildcard {
        Entry::Wildcard
    } else {
        Entry::Name(entry)
    })
}

/// A domain name's addresses, as the host resolves them now.
fn resolve_name(entry: &str) -> Result<Vec<IpNet>> {
    let addresses = (entry, 0u16)
        .to_socket_addrs()
        .map_err(|e| invalid(entry, &format!("cannot resolve it: {e}")))?;
    Ok(addresses.map(|a| IpNet::from(a.ip())).collect())
}

/// What no rule but an address in `allow_out` opens: the host's own
/// addresses and link-local ones (cloud metadata services live there).
pub(crate) fn always_denied() -> Vec<IpNet> {
    let mut nets = host_addresses();
    nets.extend(["169.254.0.0/16", "fe80::/10"].map(|n| n.parse::<IpNet>().expect("a CIDR")));
    nets
}

/// Every address of the host's interfaces but loopback's (the sandbox
/// cannot reach the host's loopback: slirp4netns runs with it disabled).
fn host_addresses() -> Vec<IpNet> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter_map(|a| {
            let address = a.address?;
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            (!ip.is_loopback()).then(|| IpNet::from(ip))
        })
        .collect()
}

/// A [`NetworkPolicy`] as address sets (one definition for both
/// enforcers: nftables here, the VMM's frame filter for microVMs).
pub use cellbox_vmm::EgressRules;

/// Where the sandbox's egress proxy listens, on the sandbox's loopback.
#[derive(Debug, Clone, Copy)]
pub struct ProxyPorts {
    /// HTTP and TLS (TCP).
    pub tcp: u16,
    /// DNS (UDP).
    pub dns: u16,
}

/// `rules` as an `nft -f` script: one table, `inet cellbox`, put in place of
/// any earlier one in a single step. TCP to ports 80 and 443 goes to the
/// egress proxy (`proxy`), and so does DNS when internet access is closed;
/// the rest is filtered by address.
pub fn nft_script(rules: &EgressRules, proxy: ProxyPorts) -> String {
    let set = |name: &str, kind: &str, nets: &[IpNet], v6: bool| {
        let elements: Vec<String> = nets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .map(|n| n.to_string())
            .collect();
        let elements = if elements.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elements.join(", "))
        };
        format!("  set {name} {{ type {kind}; flags interval; auto-merge;{elements} }}\n")
    };
    let mut script =
        String::from("table inet cellbox {}\ndelete table inet cellbox\ntable inet cellbox {\n");
    script += &set("allow4", "ipv4_addr", &rules.allow, false);
    script += &set("allow6", "ipv6_addr", &rules.allow, true);
    script += &set("deny4", "ipv4_addr", &rules.deny, false);
    script += &set("deny6", "ipv6_addr", &rules.deny, true);
    script += "  chain to_proxy {\n    type nat hook output priority -100; policy accept;\n";
    script += &format!(
        "    ip daddr != 127.0.0.0/8 tcp dport {{ 80, 443 }} redirect to :{}\n",
        proxy.tcp
    );
    let closed = !rules.allow_rest
        || rules
            .deny
            .iter()
            .any(|n| *n == IpNet::V4(Default::default()));
    if closed {
        script += &format!(
            "    ip daddr != 127.0.0.0/8 udp dport 53 redirect to :{}\n",
            proxy.dns
        );
    }
    script += "  }\n";
    script += "  chain egress {\n    type filter hook output priority 0; policy accept;\n";
    // Redirected to the proxy: the hook still names the first route's device.
    script += "    oifname \"lo\" accept\n    ip daddr 127.0.0.0/8 accept\n";
    if !closed {
        script += &format!(
            "    ip daddr {DNS_FORWARDER} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        );
    }
    script += "    ip daddr @allow4 accept\n    ip6 daddr @allow6 accept\n";
    script += "    ip daddr @deny4 reject\n    ip6 daddr @deny6 reject\n";
    if !rules.allow_rest {
        script += "    reject\n";
    }
    script += "  }\n}\n";
    script
}

/// slirp4netns's DNS forwarder inside the sandbox (its `/etc/resolv.conf`).
pub const DNS_FORWARDER: &str = "10.0.2.3";

/// The running network: slirp4netns, stopped with the sandbox (and by
/// itself if this process dies: it watches a pipe of ours), and the
/// sandbox's egress proxy.
#[derive(Debug)]
pub struct Network {
    slirp: std::process::Child,
    _exit_pipe: OwnedFd,
    proxy: EgressProxy,
    ports: ProxyPorts,
    netns: std::fs::File,
    userns: Option<std::fs::File>,
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: crate::Backend::Namespace,
        reason,
    }
}

impl Network {
    /// Starts the egress proxy (on `runtime`) for `policy`, whose address
    /// sets are `rules`, and applies them in the network namespace of
    /// process `pid` (the launcher, or without root the launcher's child,
    /// whose user namespace owns it: `rootless`), then connects it with
    /// slirp4netns and waits until it is up. `log` receives slirp4netns's
    /// messages. Blocking.
    pub fn attach(
        pid: u32,
        rootless: bool,
        policy: &NetworkPolicy,
        rules: EgressRules,
        log: &Path,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Network> {
        let open = |ns: &str| {
            std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
                .map_err(|e| Error::io(format!("opening the sandbox's {ns} namespace"), e))
        };
        let netns = open("net")?;
        let userns = match rootless {
            true => Some(open("user")?),
            false => None,
        };
        let (listener, dns) = super::egress::listen_in(pid, rootless)?;
        let port = |address: std::io::Result<std::net::SocketAddr>| {
            address
                .map(|a| a.port())
                .map_err(|e| Error::io("reading the egress proxy's ports", e))
        };
        let ports = ProxyPorts {
            tcp: port(listener.local_addr())?,
            dns: port(dns.local_addr())?,
        };
        apply_rules(userns.as_ref(), &netns, &nft_script(&rules, ports))?;
        let policy = EgressPolicy::new(policy, rules);
        let proxy = EgressProxy::start(listener, dns, policy, runtime)?;
        let (ready_read, ready_write) =
            nix::unistd::pipe().map_err(|e| Error::io("making a pipe", e.into()))?;
        let (exit_read, exit_write) =
            nix::unistd::pipe().map_err(|e| Error::io("making a pipe", e.into()))?;
        let log_file = std::fs::File::create(log)
            .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let mut command = Command::new("slirp4netns");
        command
            .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .args(["--enable-sandbox", "--enable-seccomp"])
            .args(["--ready-fd=3", "--exit-fd=4"]);
        if rootless {
            command.arg(format!("--userns-path=/proc/{pid}/ns/user"));
        }
        command
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| Error::io("logging", e))?)
            .stderr(log_file);
        pass_fds(
            &mut command,
            [(ready_write.as_raw_fd(), 3), (exit_read.as_raw_fd(), 4)],
        );
        let mut slirp = command.spawn().map_err(|e| {
            unavailable(format!(
                "network access needs slirp4netns (Debian: apt-get install slirp4netns): {e}"
            ))
        })?;
        drop((ready_write, exit_read));
        let mut byte = [0u8];
        let ready = std::io::Read::read(&mut std::fs::File::from(ready_read), &mut byte);
        if !matches!(ready, Ok(1)) {
            let _ = slirp.kill();
            let _ = slirp.wait();
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(unavailable(format!(
                "slirp4netns did not start: {}",
                said.trim()
            )));
        }
        Ok(Network {
            slirp,
            _exit_pipe: exit_write,
            proxy,
            ports,
            netns,
            userns,
        })
    }

    /// Replaces the rules of the running sandbox with `policy`'s: first the
    /// addresses' (in one step; if nft refuses, nothing changed), then the
    /// proxy's. Blocking.
    pub fn update(&self, policy: &NetworkPolicy) -> Result<()> {
        policy.check()?;
        let rules = policy.resolve()?;
        apply_rules(
            self.userns.as_ref(),
            &self.netns,
            &nft_script(&rules, self.ports),
        )?;
        self.proxy.update(EgressPolicy::new(policy, rules));
        Ok(())
    }

    /// The certificate (PEM) of the CA the sandbox must trust for the
    /// hosts whose requests its rules change.
    pub fn ca_pem(&self) -> &str {
        self.proxy.ca_pem()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = self.slirp.kill();
        let _ = self.slirp.wait();
    }
}

/// Gives the child `command` starts descriptor `from` as number `to`, for
/// each pair (only the child: the parent's stay close-on-exec, so other
/// children never hold them). Each `from` must stay open until `spawn`.
pub(crate) fn pass_fds<const N: usize>(command: &mut Command, fds: [(RawFd, RawFd); N]) {
    // SAFETY: dup2 and fcntl are async-signal-safe; the caller keeps every
    // `from` open until spawn returns, and dup2 clears close-on-exec on the copy.
    unsafe {
        command.pre_exec(move || {
            for (from, to) in fds {
                // dup2 onto itself would keep close-on-exec: clear it instead.
                let done = if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs `nft -f -` with `script` in the network namespace `netns` (having
/// entered `userns` first, the one that owns it, when this process is not root).
fn apply_rules(userns: Option<&std::fs::File>, netns: &std::fs::File, script: &str) -> Result<()> {
    // An ordinary user's PATH often lacks the sbin folders.
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .unwrap_or("nft");
    let mut command = Command::new(nft);
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let fd = netns.as_raw_fd();
    let user_fd = userns.map(|userns| userns.as_raw_fd());
    // SAFETY: setns is async-signal-safe; `netns` and `userns` outlive the
    // spawn, and the child has one thread (as entering a user namespace needs).
    unsafe {
        command.pre_exec(move || {
            if let Some(user_fd) = user_fd
                && libc::setns(user_fd, libc::CLONE_NEWUSER) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut nft = command.spawn().map_err(|e| {
        unavailable(format!(
            "network rules need nft (Debian: apt-get install nftables): {e}"
        ))
    })?;
    if let Some(mut stdin) = nft.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.as_bytes())
            .map_err(|e| Error::io("writing the network rules to nft", e))?;
    }
    let output = nft
        .wait_with_output()
        .map_err(|e| Error::io("running nft", e))?;
    if !output.status.success() {
        return Err(unavailable(format!(
            "nft refused the network rules: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_addresses_blocks_and_names() {
        let net = |text: &str| Entry::Net(text.parse::<IpNet>().unwrap());
        assert_eq!(parse_entry("8.8.8.8", false).unwrap(), net("8.8.8.8/32"));
        assert_eq!(parse_entry("10.1.2.3/8", false).unwrap(), net("10.0.0.0/8"));
        assert_eq!(parse_entry("::1", false).unwrap(), net("::1/128"));
        assert_eq!(
            parse_entry(" example.com", true).unwrap(),
            Entry::Name("example.com")
        );
        assert_eq!(parse_entry("*.example.com", true).unwrap(), Entry::Wildcard);
        let local = resolve_name("localhost").unwrap();
        assert!(local.iter().any(|n| n.addr().is_loopback()), "{local:?}");
        for (bad, names) in [
            ("10.0.0.0/33", true),
            ("example.com", false),
            ("*.example.com", false),
            ("*.", true),
            ("a.*.example.com", true),
            ("a b", true),
            ("", true),
        ] {
            let error = parse_entry(bad, names).unwrap_err().to_string();
            assert!(error.contains("network rule"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_script_allows_before_it_denies_and_ends_as_asked() {
        let rules = NetworkPolicy {
            allow_internet_access: false,
            allow_out: vec!["198.51.100.1".into(), "2001:db8::/32".into()],
            deny_out: vec!["0.0.0.0/0".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let ports = ProxyPorts {
            tcp: 4242,
            dns: 5353,
        };
        let script = nft_script(&rules, ports);
        assert!(script.starts_with("table inet cellbox {}\ndelete table inet cellbox\n"));
        assert!(
            script.contains("tcp dport { 80, 443 } redirect to :4242"),
            "{script}"
        );
        assert!(
            script.contains("udp dport 53 redirect to :5353"),
            "{script}"
        );
        assert!(
            !script.contains("th dport 53 accept"),
            "closed: the proxy's DNS only"
        );
        assert!(script.contains("set allow4 { type ipv4_addr; flags interval; auto-merge; elements = { 198.51.100.1/32 }; }"), "{script}");
        assert!(script.contains("elements = { 2001:db8::/32 }"), "{script}");
        assert!(script.contains("169.254.0.0/16"), "{script}");
        let allow = script.find("@allow4 accept").unwrap();
        let deny = script.find("@deny4 reject").unwrap();
        assert!(allow < deny);
        assert!(script.contains("    reject\n  }"), "{script}");
        let open = nft_script(&NetworkPolicy::internet().resolve().unwrap(), ports);
        assert!(!open.contains("    reject\n"), "{open}");
        assert!(!open.contains("udp dport 53") && open.contains("th dport 53 accept"));
        let all_denied = NetworkPolicy {
            deny_out: vec!["0.0.0.0/0".into()],
            ..NetworkPolicy::internet()
        };
        let closed = nft_script(&all_denied.resolve().unwrap(), ports);
        assert!(
            closed.contains("udp dport 53 redirect"),
            "E2B's closed: {closed}"
        );
        assert!(!NetworkPolicy::default().enabled());
        assert!(NetworkPolicy::internet().enabled());
    }
}
