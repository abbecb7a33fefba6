//! Who is on the other end of a request: the TCP peer, always, and the client
//! behind it, which `X-Forwarded-For` may name only when the peer is a proxy
//! the operator trusts (`[server] trusted_proxies`). Anyone can send the
//! header, so from an untrusted peer it is ignored; entries that are not IP
//! addresses are never believed or recorded.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

pub use crate::config::pins::{Cidr, CidrError as ForwardedError};

/// Parses `[server] trusted_proxies`.
pub fn parse_proxies<'a>(
    entries: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Cidr>, ForwardedError> {
    entries.into_iter().map(str::parse).collect()
}

pub use crate::session::Origin;

impl Origin {
    pub fn of(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Origin {
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        Origin {
            peer,
            client: client_ip(peer.ip(), &hops, trusted),
        }
    }
}

/// Walks the forwarded hops from the right (each proxy appends the address
/// it saw): while the current hop is a trusted proxy, the entry before it is
/// believed; the first untrusted address is the client. An entry that is not
/// an IP address ends the walk, leaving the last address known to be real.
pub fn client_ip(peer: IpAddr, hops: &[&str], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => client = ip,
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(s: &[&str]) -> Vec<Cidr> {
        parse_proxies(s.iter().copied()).unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.3.4")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped peers match");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
            "example.com",
            "",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let none = cidrs(&[]);
        assert_eq!(
            client_ip(ip("198.51.100.7"), &["203.0.113.99"], &none),
            ip("198.51.100.7")
        );
        let other = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.7"), &["203.0.113.99"], &other),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn trusted_chain_walks_from_the_right() {
        let t = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        // spoofed, real client, inner proxy; peer is the outer proxy.
        let hops = ["6.6.6.6", "203.0.113.5", "10.1.1.1"];
        assert_eq!(client_ip(ip("127.0.0.1"), &hops, &t), ip("203.0.113.5"));
        // Every hop trusted: the leftmost is as far as we can see.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["10.2.2.2", " 10.1.1.1 "], &t),
            ip("10.2.2.2")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &t), ip("127.0.0.1"));
    }

    #[test]
    fn non_ip_entries_end_the_walk_and_are_never_returned() {
        let t = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["203.0.113.99 (forged-by-alice)"], &t),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["203.0.113.1", "bogus", "10.0.0.9"], &t),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["", "unknown"], &t),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn origin_reads_every_header_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 203.0.113.5".parse().unwrap());
        h.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let o = Origin::of(peer, &h, &cidrs(&["127.0.0.1", "10.0.0.0/8"]));
        assert_eq!(o.peer, peer);
        assert_eq!(o.client, ip("203.0.113.5"));
    }
}
