//! `server.trusted_proxies`: the client address behind an ingress or load balancer. Only when the
//! connection's peer is in the list is `X-Forwarded-For` read, right to left, skipping the
//! entries that are trusted proxies themselves; the first untrusted one is the client (for
//! audit records, the unauthenticated-flood keys and logs). With an empty list, a peer outside
//! it, or an entry that is not an IP address, the header is ignored and the peer is the client.
//! The per-IP connection limit stays on the peer (a connection has no XFF). The header itself
//! never reaches the NIM (`proxy::headers` strips every `X-Forwarded-*`). PROXY protocol is not
//! implemented.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

/// One list entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address.
pub fn parse_entry(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (\"10.0.0.0/8\") or an IP address"))
}

impl TrustedProxies {
    pub fn new(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|s| parse_entry(s))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address when `peer` is a trusted proxy that says who it forwards for;
    /// `None`: the peer itself is the client.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if self.0.is_empty() || !self.trusts(peer.ip()) {
            return None;
        }
        let mut entries = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            entries.extend(v.to_str().ok()?.split(',').map(str::trim));
        }
        let mut leftmost = None;
        for e in entries.iter().rev() {
            let ip = e
                .parse::<IpAddr>()
                .or_else(|_| e.parse::<SocketAddr>().map(|a| a.ip()))
                .ok()?
                .to_canonical();
            if !self.trusts(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn right_most_untrusted_entry_from_a_trusted_peer_only() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.2.2.2"]);
        assert_eq!(t.client(proxy, &h), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(
            t.client(stranger, &h),
            None,
            "an untrusted peer's XFF is ignored"
        );
        assert_eq!(t.client(proxy, &HeaderMap::new()), None);
        assert_eq!(
            t.client(proxy, &xff(&["10.3.3.3, 192.0.2.1"])),
            Some("10.3.3.3".parse().unwrap()),
            "all trusted: the left-most"
        );
        assert_eq!(t.client(proxy, &xff(&["198.51.100.7, bogus"])), None);
        assert_eq!(
            t.client(proxy, &xff(&["[2001:db8::1]:443"])),
            Some("2001:db8::1".parse().unwrap())
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        assert_eq!(t.client(mapped, &h), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(TrustedProxies::default().client(proxy, &h), None);
        assert!(TrustedProxies::new(&["10.0.0.0/33".into()]).is_err());
    }
}
