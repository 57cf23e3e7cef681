//! Which client a request comes from, for the per-client rate limit and for the
//! services' own per-client limits.
//!
//! The host names the connection's peer (`spin-client-addr`); behind an ingress or a
//! load balancer that peer is the proxy, the same for every customer. The proxy names
//! the client in `Forwarded` or `X-Forwarded-For`, but a client can write those
//! headers too, so they count only when the peer is a configured trusted proxy, and
//! only as far back as the chain of trusted proxies goes.

use std::net::IpAddr;

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {bits}"))?,
        };
        Ok(Network { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 { 0 } else { bits >> (width - prefix) }
}

/// The trusted proxies of the `trusted_proxies` variable: comma-separated addresses
/// or ranges. An entry that does not parse makes the whole setting an error, which
/// the gateway logs while trusting no proxy (never a guessed subset).
pub fn trusted_proxies(setting: &str) -> Result<Vec<Network>, String> {
    setting
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(Network::parse)
        .collect()
}

/// The address of `host:port`, `[v6]:port`, a bare address, or a quoted/bracketed
/// `Forwarded` node (`"[2001:db8::1]:4711"`); `None` for anything else (`unknown`,
/// obfuscated identifiers).
fn address_of(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

/// The forwarding chain a proxy reported, client first: `Forwarded`'s `for=` nodes
/// when that header is present, else `X-Forwarded-For`'s entries. Unparsable nodes
/// stay in place as `None`.
fn chain(forwarded: Option<&str>, forwarded_for: Option<&str>) -> Vec<Option<IpAddr>> {
    if let Some(forwarded) = forwarded {
        return forwarded
            .split(',')
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        key.trim().eq_ignore_ascii_case("for").then_some(value)
                    })
                    .and_then(address_of)
            })
            .collect();
    }
    forwarded_for
        .map(|list| list.split(',').map(address_of).collect())
        .unwrap_or_default()
}

/// The client's address: the peer, unless the peer is a trusted proxy; then, walking
/// the proxies' chain from the nearest hop back, the first address that is not a
/// trusted proxy (the last trustworthy one when the chain ends or holds garbage).
/// `None` when even the peer is unknown.
pub fn client_address(
    peer: Option<&str>,
    forwarded: Option<&str>,
    forwarded_for: Option<&str>,
    trusted: &[Network],
) -> Option<IpAddr> {
    let mut client = address_of(peer?)?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(client) {
        return Some(client);
    }
    for hop in chain(forwarded, forwarded_for).into_iter().rev() {
        let Some(hop) = hop else { break };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> Vec<Network> {
        trusted_proxies("10.0.0.0/8, 192.168.1.7,fd00::/8").unwrap()
    }

    #[test]
    fn networks_match_their_ranges() {
        let private = Network::parse("10.0.0.0/8").unwrap();
        assert!(private.contains(ip("10.200.3.4")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped peer");
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(Network::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Network::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(trusted_proxies("10.0.0.0/8,nonsense").unwrap_err().contains("nonsense"));
        assert_eq!(trusted_proxies(" ").unwrap(), vec![]);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_writes() {
        let client = client_address(Some("203.0.113.9:5123"), None, Some("198.51.100.1"), &proxies());
        assert_eq!(client, Some(ip("203.0.113.9")));
        // With no trusted proxies configured, the headers never count.
        let client = client_address(Some("10.1.1.1:80"), None, Some("198.51.100.1"), &[]);
        assert_eq!(client, Some(ip("10.1.1.1")));
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_first_untrusted_hop() {
        // ingress (10.1.1.1) ← load balancer (192.168.1.7) ← customer 198.51.100.1,
        // who also wrote a forged first entry.
        let client = client_address(
            Some("10.1.1.1:40000"),
            None,
            Some("6.6.6.6, 198.51.100.1, 192.168.1.7"),
            &proxies(),
        );
        assert_eq!(client, Some(ip("198.51.100.1")));
        // Two customers behind the same ingress are two clients.
        let other = client_address(Some("10.1.1.1:40001"), None, Some("198.51.100.2"), &proxies());
        assert_eq!(other, Some(ip("198.51.100.2")));
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for() {
        let client = client_address(
            Some("[fd00::5]:443"),
            Some("for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.2.2.2"),
            Some("6.6.6.6"),
            &proxies(),
        );
        assert_eq!(client, Some(ip("2001:db8:cafe::17")));
    }

    #[test]
    fn a_broken_chain_stops_at_the_last_trustworthy_hop() {
        let garbage = client_address(Some("10.1.1.1:1"), None, Some("not-an-ip, 10.3.3.3"), &proxies());
        assert_eq!(garbage, Some(ip("10.3.3.3")));
        let hidden = client_address(Some("10.1.1.1:1"), Some("for=unknown"), None, &proxies());
        assert_eq!(hidden, Some(ip("10.1.1.1")));
        assert_eq!(client_address(None, None, Some("198.51.100.1"), &proxies()), None);
    }
}
