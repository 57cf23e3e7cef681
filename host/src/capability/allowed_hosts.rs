//! Spin's `allowed_outbound_hosts` grammar: `scheme://host[:port]`, where the scheme,
//! the host (whole, or a leading `*.` label) and the port (number, `a..b` range, or
//! `*`) may be wildcards, the host may be an IP range in CIDR notation
//! (`tcp://10.0.0.0/8:5432`, matched by IP literals in it). An omitted port means the
//! scheme's well-known port. Spin 2's `insecure:allow-all` is refused, as Spin 3
//! refuses it (`*://*:*` allows everything).

use std::fmt;
use std::net::IpAddr;

/// Spin 2's entry for every destination, which Spin 3 refuses when it loads an app.
const SPIN2_ALLOW_ALL: &str = "insecure:allow-all";

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`: any strict subdomain of the suffix (stored as `.example.com`).
    Subdomain(String),
    Exact(String),
    /// `10.0.0.0/8`: IP literals in the network (the address masked to its prefix).
    Network(IpAddr, u8),
}

fn prefix_mask(address: IpAddr, prefix: u8) -> u128 {
    let bits: u32 = if address.is_ipv4() { 32 } else { 128 };
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (bits - u32::from(prefix))) & (u128::MAX >> (128 - bits))
    }
}

fn to_bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `addr/len` (IPv6 optionally in brackets): the network, or why it is not one.
fn parse_network(text: &str, host: &str) -> Result<(IpAddr, u8), String> {
    let (address, prefix) = host.split_once('/').ok_or_else(|| format!("`{text}`: not a network"))?;
    let address: IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("`{text}`: `{address}` is not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?;
    let masked = to_bits(address) & prefix_mask(address, prefix);
    let address = match address {
        IpAddr::V4(_) => IpAddr::V4((masked as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(masked.into()),
    };
    Ok((address, prefix))
}

/// `10.0.0.0/8` or `10.0.0.0/8:port`: the network and the port text, when `rest`
/// is a CIDR range (a path after a host is an error elsewhere).
fn split_network(rest: &str) -> Option<(&str, Option<&str>)> {
    let (address, tail) = rest.split_once('/')?;
    if address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_err()
    {
        return None;
    }
    match tail.split_once(':') {
        Some((prefix, port)) => Some((&rest[..address.len() + 1 + prefix.len()], Some(port))),
        None => Some((rest, None)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Range(u16, u16),
    /// No port written: the scheme's default port, or any port for schemes without one.
    SchemeDefault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHostPattern {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
    raw: String,
}

impl fmt::Display for AllowedHostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

pub fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "redis" => 6379,
        "postgres" => 5432,
        "mysql" => 3306,
        "mqtt" => 1883,
        _ => return None,
    })
}

impl AllowedHostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == SPIN2_ALLOW_ALL {
            return Err(format!(
                "`{SPIN2_ALLOW_ALL}` is refused by Spin 3: write `*://*:*` to allow every destination"
            ));
        }
        let raw = text.to_string();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` has no scheme: write e.g. `https://{text}`"))?;
        if scheme.is_empty() {
            return Err(format!("`{text}` has an empty scheme"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let network = split_network(rest);
        if rest.contains('/') && network.is_none() {
            return Err(format!(
                "`{text}` has a path; allowed hosts are `scheme://host[:port]` only"
            ));
        }
        let (host, port) = network.unwrap_or_else(|| split_host_port(rest));
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        let host = if network.is_some() {
            let (address, prefix) = parse_network(text, host)?;
            HostPattern::Network(address, prefix)
        } else if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!(
                    "`{text}`: a host wildcard must be a whole leading label, e.g. `*.example.com`"
                ));
            }
            HostPattern::Subdomain(format!(".{}", suffix.to_ascii_lowercase()))
        } else if host.contains('*') {
            return Err(format!(
                "`{text}`: a host wildcard must be a whole leading label, e.g. `*.example.com`"
            ));
        } else {
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        let port = match port {
            None => PortPattern::SchemeDefault,
            Some("*") => PortPattern::Any,
            Some(p) => match p.split_once("..") {
                Some((lo, hi)) => {
                    let lo = parse_port(text, lo)?;
                    let hi = parse_port(text, hi)?;
                    if lo >= hi {
                        return Err(format!("`{text}`: port range must be ascending"));
                    }
                    // Spin's ranges exclude the upper bound, like Rust's `a..b`.
                    PortPattern::Range(lo, hi - 1)
                }
                None => {
                    let p = parse_port(text, p)?;
                    PortPattern::Range(p, p)
                }
            },
        };
        Ok(Self {
            scheme: (scheme != "*").then(|| scheme.to_ascii_lowercase()),
            host,
            port,
            raw,
        })
    }

    pub fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if let Some(s) = &self.scheme
            && !s.eq_ignore_ascii_case(scheme)
        {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()) && host.len() > suffix.len(),
            HostPattern::Network(network, prefix) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|address| {
                    address.is_ipv4() == network.is_ipv4()
                        && to_bits(address) & prefix_mask(address, *prefix) == to_bits(*network)
                }),
        };
        if !host_ok {
            return false;
        }
        let port = port.or_else(|| default_port(scheme));
        match (&self.port, port) {
            (PortPattern::Any, _) => true,
            (PortPattern::Range(lo, hi), Some(p)) => (*lo..=*hi).contains(&p),
            (PortPattern::Range(..), None) => false,
            (PortPattern::SchemeDefault, p) => {
                let expected = self.scheme.as_deref().and_then(default_port);
                match expected {
                    Some(d) => p == Some(d),
                    // Wildcard or unusual scheme without a port: any port.
                    None => true,
                }
            }
        }
    }
}

fn parse_port(text: &str, p: &str) -> Result<u16, String> {
    p.parse().map_err(|_| format!("`{text}`: invalid port `{p}`"))
}

/// Splits `host[:port]`, keeping bracketed IPv6 literals whole.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let host = &s[..end + 2];
        return (host, rest[end + 1..].strip_prefix(':'));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// A component's full outbound policy.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    patterns: Vec<AllowedHostPattern>,
}

impl AllowedHosts {
    /// Builds the policy from already-rendered entries (templates substituted).
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Self::default();
        for e in entries {
            out.patterns.push(AllowedHostPattern::parse(e)?);
        }
        Ok(out)
    }

    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.patterns.iter().any(|p| p.matches(scheme, host, port))
    }
}

/// Checks one rendered entry as the manifest validation does.
pub fn check_entry(entry: &str) -> Result<(), String> {
    AllowedHostPattern::parse(entry).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, scheme: &str, host: &str, port: Option<u16>) -> bool {
        AllowedHosts::parse([pattern]).unwrap().allows(scheme, host, port)
    }

    #[test]
    fn exact_host_uses_scheme_default_port() {
        assert!(allows("https://api.example.com", "https", "api.example.com", None));
        assert!(allows("https://api.example.com", "https", "API.example.com", Some(443)));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            Some(8443)
        ));
        assert!(!allows("https://api.example.com", "http", "api.example.com", None));
        assert!(!allows("https://api.example.com", "https", "other.example.com", None));
    }

    #[test]
    fn wildcards() {
        assert!(allows("https://*.example.com", "https", "a.b.example.com", None));
        assert!(!allows("https://*.example.com", "https", "example.com", None));
        assert!(allows("*://example.com:*", "http", "example.com", Some(1234)));
        assert!(allows(
            "http://*.spin.internal",
            "http",
            "chain-back.spin.internal",
            None
        ));
        assert!(allows("http://localhost:8000..8002", "http", "localhost", Some(8001)));
        assert!(!allows("http://localhost:8000..8002", "http", "localhost", Some(8002)));
        assert!(AllowedHosts::parse(["*://*:*"]).unwrap().allows("ftp", "x", Some(1)));
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "example.com",
            "https://example.com/path",
            "https://ex*ample.com",
            "https://a:99999",
            "https://a:9..1",
        ] {
            assert!(AllowedHostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ip_ranges_in_cidr_notation_match_addresses_in_them() {
        assert!(allows("tcp://127.0.0.0/24:8080", "tcp", "127.0.0.1", Some(8080)));
        assert!(allows("tcp://127.0.0.0/24:8080", "tcp", "127.0.0.255", Some(8080)));
        assert!(!allows("tcp://127.0.0.0/24:8080", "tcp", "127.0.1.1", Some(8080)));
        assert!(!allows("tcp://127.0.0.0/24:8080", "tcp", "127.0.0.1", Some(8081)));
        assert!(!allows("tcp://127.0.0.0/24:8080", "tcp", "localhost", Some(8080)));
        assert!(allows("*://10.0.0.0/8:*", "postgres", "10.1.2.3", Some(5432)));
        assert!(allows("*://10.0.0.0/8:*", "http", "10.255.0.1", None));
        assert!(!allows("*://10.0.0.0/8:*", "http", "11.0.0.1", None));
        // The address is masked to its prefix; no port means the scheme's own.
        assert!(allows("http://192.168.1.77/16", "http", "192.168.200.1", None));
        assert!(!allows("http://192.168.1.77/16", "http", "192.168.200.1", Some(8080)));
        assert!(allows("http://0.0.0.0/0:*", "http", "8.8.8.8", Some(1)));
        assert!(allows("http://[fd00::]/8:*", "http", "[fd12::1]", Some(80)));
        assert!(!allows("http://[fd00::]/8:*", "http", "10.0.0.1", Some(80)));
        for bad in [
            "tcp://10.0.0.0/33:80",
            "tcp://10.0.0.0/x:80",
            "tcp://[fd00::]/129:80",
            "tcp://300.0.0.0/8:1",
        ] {
            assert!(AllowedHostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn spin2_allow_all_is_refused_and_wildcards_allow_anything() {
        let refused = check_entry("insecure:allow-all").unwrap_err();
        assert!(refused.contains("*://*:*"), "{refused}");
        assert!(AllowedHosts::parse(["insecure:allow-all"]).is_err());
        assert!(check_entry("insecure:allow-some").is_err());
        let all = AllowedHosts::parse(["*://*:*"]).unwrap();
        assert!(all.allows("tcp", "203.0.113.9", Some(9)));
    }

    #[test]
    fn ipv6_literals() {
        assert!(allows("http://[::1]:8080", "http", "[::1]", Some(8080)));
    }
}
