//! What a sandbox may reach: address rules, and the check of every Ethernet
//! frame the guest sends against them (the guest cannot change either).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Outbound rules as address sets; first match wins: `allow`, then `deny`,
/// then `allow_rest` decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    /// Always reachable.
    pub allow: Vec<IpNet>,
    /// Never reachable (unless in `allow`).
    pub deny: Vec<IpNet>,
    /// Whether everything else is reachable.
    pub allow_rest: bool,
}

impl EgressRules {
    /// Whether a packet to `ip` may leave.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        !self.deny.iter().any(|net| net.contains(&ip)) && self.allow_rest
    }
}

/// The VM's frame filter: [`EgressRules`] plus what the VM's user-mode
/// network needs (ARP, DNS queries to its forwarder). Only IPv4 leaves, and
/// never towards the host's loopback, whatever the rules say.
#[derive(Debug, Clone)]
pub struct FrameFilter {
    rules: EgressRules,
    dns: Option<Ipv4Addr>,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

impl FrameFilter {
    /// `rules`, and DNS (port 53) to `dns` when given.
    pub fn new(rules: EgressRules, dns: Option<Ipv4Addr>) -> FrameFilter {
        FrameFilter { rules, dns }
    }

    /// Whether the guest's Ethernet `frame` may go out.
    pub fn admits(&self, frame: &[u8]) -> bool {
        let Some(ethertype) = frame.get(12..14) else {
            return false;
        };
        match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
            ETHERTYPE_ARP => true,
            ETHERTYPE_IPV4 => self.admits_ipv4(&frame[ETH_HEADER..]),
            _ => false,
        }
    }

    fn admits_ipv4(&self, packet: &[u8]) -> bool {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return false;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        if dst.is_loopback() || dst.is_unspecified() {
            return false;
        }
        if Some(dst) == self.dns && destination_port(packet) == Some(53) {
            return true;
        }
        self.rules.allows(IpAddr::V4(dst))
    }
}

/// For a refused TCP connection attempt (a SYN), the reset the guest gets
/// back at once, as from a host that refuses it (`ECONNREFUSED` rather than
/// a wait for a timeout). `None` for anything else.
pub fn tcp_reset_for(frame: &[u8]) -> Option<Vec<u8>> {
    let ip = frame.get(ETH_HEADER..)?;
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4
        || ip.len() < 20
        || ip[0] >> 4 != 4
        || ip[9] != PROTO_TCP
    {
        return None;
    }
    let ip_header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = ip.get(ip_header..total)?;
    if tcp.len() < 20 || tcp[13] & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return None;
    }
    let tcp_header = usize::from(tcp[12] >> 4) * 4;
    let payload = tcp.len().checked_sub(tcp_header)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = seq.wrapping_add(1).wrapping_add(payload as u32);

    let mut reply = Vec::with_capacity(ETH_HEADER + 40);
    reply.extend_from_slice(&frame[6..12]); // to the sender
    reply.extend_from_slice(&frame[0..6]);
    reply.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut ip_reply = [0u8; 20];
    ip_reply[0] = 0x45;
    ip_reply[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip_reply[8] = 64; // TTL
    ip_reply[9] = PROTO_TCP;
    ip_reply[12..16].copy_from_slice(&ip[16..20]);
    ip_reply[16..20].copy_from_slice(&ip[12..16]);
    let sum = checksum(&ip_reply, 0);
    ip_reply[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut tcp_reply = [0u8; 20];
    tcp_reply[0..2].copy_from_slice(&tcp[2..4]);
    tcp_reply[2..4].copy_from_slice(&tcp[0..2]);
    tcp_reply[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp_reply[12] = 5 << 4;
    tcp_reply[13] = TCP_RST | TCP_ACK;
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&ip_reply[12..16]);
    pseudo[4..8].copy_from_slice(&ip_reply[16..20]);
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = checksum(&tcp_reply, ones_sum(&pseudo));
    tcp_reply[16..18].copy_from_slice(&sum.to_be_bytes());
    reply.extend_from_slice(&ip_reply);
    reply.extend_from_slice(&tcp_reply);
    Some(reply)
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The 32-bit one's-complement sum of `bytes` as 16-bit big-endian words.
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `bytes`, starting from the partial sum `start`.
fn checksum(bytes: &[u8], start: u32) -> u16 {
    let mut sum = start + ones_sum(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP or UDP destination port of an IPv4 packet's first fragment.
fn destination_port(packet: &[u8]) -> Option<u16> {
    let header = usize::from(packet[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if !matches!(packet[9], PROTO_TCP | PROTO_UDP) || fragment_offset != 0 {
        return None;
    }
    let port = packet.get(header + 2..header + 4)?;
    Some(u16::from_be_bytes([port[0], port[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// An Ethernet frame with an IPv4 header to `dst` and a `proto` header
    /// whose destination port is `port`.
    fn ipv4_frame(dst: [u8; 4], proto: u8, port: u16) -> Vec<u8> {
        let mut frame = vec![0u8; ETH_HEADER];
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
        ip[16..20].copy_from_slice(&dst);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0, 80]);
        frame.extend_from_slice(&port.to_be_bytes());
        frame.extend_from_slice(&[0; 16]);
        frame
    }

    #[test]
    fn a_refused_syn_gets_a_valid_reset() {
        let mut syn = ipv4_frame([198, 51, 100, 2], PROTO_TCP, 8080);
        syn[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        syn[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let ip = ETH_HEADER;
        syn[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
        syn[ip + 24..ip + 28].copy_from_slice(&1000u32.to_be_bytes()); // seq
        syn[ip + 32] = 5 << 4;
        syn[ip + 33] = TCP_SYN;
        let reset = tcp_reset_for(&syn).unwrap();
        assert_eq!(&reset[0..6], &[2, 0, 0, 0, 0, 1], "back to the sender");
        assert_eq!(&reset[ip + 12..ip + 16], &[198, 51, 100, 2]);
        assert_eq!(&reset[ip + 16..ip + 20], &[10, 0, 2, 15]);
        let tcp = &reset[ip + 20..];
        assert_eq!(&tcp[0..2], &8080u16.to_be_bytes());
        assert_eq!(&tcp[2..4], &80u16.to_be_bytes());
        assert_eq!(u32::from_be_bytes(tcp[8..12].try_into().unwrap()), 1001);
        assert_eq!(tcp[13], TCP_RST | TCP_ACK);
        // Both checksums verify (a correct one sums to zero).
        assert_eq!(checksum(&reset[ip..ip + 20], 0), 0);
        let mut pseudo = reset[ip + 12..ip + 20].to_vec();
        pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
        assert_eq!(checksum(tcp, ones_sum(&pseudo)), 0);
        // Not for anything but a bare SYN.
        let mut ack = syn.clone();
        ack[ip + 33] = TCP_SYN | TCP_ACK;
        assert!(tcp_reset_for(&ack).is_none());
        assert!(tcp_reset_for(&ipv4_frame([198, 51, 100, 2], PROTO_UDP, 53)).is_none());
        assert!(tcp_reset_for(&syn[..ip + 30]).is_none());
    }

    #[test]
    fn rules_match_allow_then_deny_then_the_rest() {
        let rules = EgressRules {
            allow: vec![net("198.51.100.1/32")],
            deny: vec![net("198.51.100.0/24")],
            allow_rest: true,
        };
        assert!(rules.allows("198.51.100.1".parse().unwrap()));
        assert!(!rules.allows("198.51.100.2".parse().unwrap()));
        assert!(rules.allows("203.0.113.9".parse().unwrap()));
        let closed = EgressRules {
            allow_rest: false,
            ..rules
        };
        assert!(!closed.allows("203.0.113.9".parse().unwrap()));
        assert!(closed.allows("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn frames_are_checked_by_destination() {
        let rules = EgressRules {
            allow: vec![net("198.51.100.1/32"), net("127.0.0.0/8")],
            deny: Vec::new(),
            allow_rest: false,
        };
        let filter = FrameFilter::new(rules, Some(Ipv4Addr::new(10, 0, 2, 3)));
        assert!(filter.admits(&ipv4_frame([198, 51, 100, 1], PROTO_TCP, 80)));
        assert!(!filter.admits(&ipv4_frame([198, 51, 100, 2], PROTO_TCP, 80)));
        // DNS to the forwarder only, and only on port 53.
        assert!(filter.admits(&ipv4_frame([10, 0, 2, 3], PROTO_UDP, 53)));
        assert!(!filter.admits(&ipv4_frame([10, 0, 2, 3], PROTO_TCP, 22)));
        // The host's loopback never, even when a rule says so.
        assert!(!filter.admits(&ipv4_frame([127, 0, 0, 1], PROTO_TCP, 80)));
        // ARP goes; IPv6, other types, runts and garbage do not.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert!(filter.admits(&arp));
        let mut v6 = ipv4_frame([198, 51, 100, 1], PROTO_TCP, 80);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert!(!filter.admits(&v6));
        assert!(!filter.admits(&[0u8; 10]));
        let mut short = ipv4_frame([198, 51, 100, 1], PROTO_TCP, 80);
        short.truncate(ETH_HEADER + 19);
        assert!(!filter.admits(&short));
        let mut bad_header = ipv4_frame([10, 0, 2, 3], PROTO_UDP, 53);
        bad_header[ETH_HEADER] = 0x4f; // header length past the packet's end
        assert!(!filter.admits(&bad_header));
    }
}
