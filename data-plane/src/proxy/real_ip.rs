//! The client's address when the DP sits behind trusted proxies (`--trusted-proxies`): the
//! rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Without trusted proxies,
//! or when the peer is not one of them, the client is the TCP peer and `X-Forwarded-For` is
//! only passed along, never believed.

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An IP network, `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `--trusted-proxies`: a comma-separated list of networks.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The client's address: `peer` itself unless it is a trusted proxy; then the rightmost
/// `X-Forwarded-For` address that is not trusted (or the leftmost, if all are). An unparsable
/// entry stops the walk: what lies left of it cannot be trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        let cases = [
            ("10.0.0.0/8", "10.9.8.7", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("10.0.0.0/8", "fd00::1", false),
        ];
        for (net, addr, want) in cases {
            assert_eq!(
                net.parse::<Cidr>().unwrap().contains(ip(addr)),
                want,
                "{net} ∋ {addr}"
            );
        }
        for bad in ["", "10.0.0.0/33", "::/129", "x", "10.0.0.0/-1", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(parse_list("10.0.0.0/8, 127.0.0.1").unwrap().len(), 2);
        assert!(parse_list("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn client_address() {
        let trusted = parse_list("127.0.0.0/8,10.0.0.0/8").unwrap();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let cases: [(&str, &[&str], &[Cidr], &str); 8] = [
            // Untrusted peer: XFF is ignored.
            ("203.0.113.5", &["1.2.3.4"], &trusted, "203.0.113.5"),
            // No trusted proxies configured: the peer, always.
            ("127.0.0.1", &["1.2.3.4"], &[], "127.0.0.1"),
            ("127.0.0.1", &["1.2.3.4"], &trusted, "1.2.3.4"),
            // A spoofed entry left of the real client is not believed.
            (
                "127.0.0.1",
                &["6.6.6.6, 1.2.3.4, 10.0.0.2"],
                &trusted,
                "1.2.3.4",
            ),
            (
                "127.0.0.1",
                &["6.6.6.6", "1.2.3.4, 10.0.0.2"],
                &trusted,
                "1.2.3.4",
            ),
            ("127.0.0.1", &["10.0.0.3, 10.0.0.2"], &trusted, "10.0.0.3"),
            (
                "127.0.0.1",
                &["6.6.6.6, garbage, 10.0.0.2"],
                &trusted,
                "10.0.0.2",
            ),
            ("127.0.0.1", &[], &trusted, "127.0.0.1"),
        ];
        for (peer, values, trusted, want) in cases {
            assert_eq!(
                client_ip(ip(peer), &xff(values), trusted),
                ip(want),
                "{peer} {values:?}"
            );
        }
    }
}
