//! Budgets for long polls (`?wait_ms=`). A waiting request holds a gateway instance
//! and a service instance until its answer is ready, so waits are counted per
//! customer and per client address (an IPv6 client by its /64, which one subscriber
//! gets whole), each a list of leases in key-value (shared by every gateway instance). A wait past any budget is not refused: it is
//! forwarded without `wait_ms` and answers at once, as a plain read would, so a client
//! that polls too much gets its answer and no instance is held. A lease expires on its
//! own (an instance that died mid-wait does not keep its place forever).

use serde::{Deserialize, Serialize};

/// How long past its wait a lease outlives a request that never released it.
pub const LEASE_GRACE_MS: i64 = 5_000;

/// Default budgets (variables `max_waits_per_customer`, `max_waits_per_client`; 0
/// turns a budget off, e.g. for load from one address).
pub const DEFAULT_PER_CUSTOMER: usize = 2;
pub const DEFAULT_PER_CLIENT: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Leases {
    pub leases: Vec<Lease>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub until_ms: i64,
}

impl Leases {
    /// The leases with `id` added, or `None` when `max` live leases are held already.
    /// Expired leases are dropped on the way.
    pub fn take(&self, id: &str, max: usize, now_ms: i64, wait_ms: u64) -> Option<Leases> {
        let mut live = self.live(now_ms);
        if live.leases.len() >= max {
            return None;
        }
        live.leases.push(Lease {
            id: id.to_string(),
            until_ms: now_ms + wait_ms as i64 + LEASE_GRACE_MS,
        });
        Some(live)
    }

    /// The leases without `id` (and without expired ones).
    pub fn release(&self, id: &str, now_ms: i64) -> Leases {
        let mut live = self.live(now_ms);
        live.leases.retain(|l| l.id != id);
        live
    }

    fn live(&self, now_ms: i64) -> Leases {
        Leases {
            leases: self.leases.iter().filter(|l| l.until_ms > now_ms).cloned().collect(),
        }
    }
}

/// The `wait_ms` a request asks for (`None`: none, zero or not a number; the service
/// refuses bad values itself).
pub fn requested_wait_ms(query: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(name, value)| (name == "wait_ms").then(|| value.parse::<u64>().ok()))
        .flatten()
        .filter(|ms| *ms > 0)
}

/// `query` without its `wait_ms` parameters.
pub fn without_wait(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("wait_ms"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The key-value keys whose budgets a wait of `customer` from `client` counts against
/// (customer's, then client's).
pub fn budget_keys(customer: &str, client: &str) -> [String; 2] {
    [
        format!("waits:customer:{customer}"),
        format!("waits:client:{}", client_network(client)),
    ]
}

/// The address a client's budget is kept under: an IPv6 address by its /64.
fn client_network(client: &str) -> String {
    match client.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or_else(|| client.into(), |v4| v4.to_string()),
        _ => client.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_its_maximum_and_a_release_frees_a_place() {
        let empty = Leases::default();
        let one = empty.take("a", 2, 1_000, 10_000).unwrap();
        let two = one.take("b", 2, 1_000, 10_000).unwrap();
        assert_eq!(two.take("c", 2, 1_000, 10_000), None, "full");
        let freed = two.release("a", 2_000);
        assert_eq!(freed.leases.len(), 1);
        assert!(freed.take("c", 2, 2_000, 10_000).is_some());
        assert_eq!(two.release("unknown", 2_000), two, "releasing twice is harmless");
    }

    #[test]
    fn a_lease_never_released_expires_after_its_wait_and_the_grace() {
        let held = Leases::default().take("lost", 1, 0, 10_000).unwrap();
        assert_eq!(held.take("next", 1, 10_000 + LEASE_GRACE_MS - 1, 100), None);
        let after = held.take("next", 1, 10_000 + LEASE_GRACE_MS, 100).unwrap();
        assert_eq!(after.leases.len(), 1);
        assert_eq!(after.leases[0].id, "next");
    }

    #[test]
    fn an_ipv6_client_is_budgeted_by_its_64_and_ipv4_by_its_address() {
        let [customer, client] = budget_keys("u-1", "2001:db8:1:2:aaaa::1");
        assert_eq!(customer, "waits:customer:u-1");
        assert_eq!(client, "waits:client:2001:db8:1:2::/64");
        assert_eq!(budget_keys("u-1", "2001:db8:1:2:ffff::9")[1], client, "same /64");
        assert_eq!(budget_keys("u-1", "198.51.100.7")[1], "waits:client:198.51.100.7");
        assert_eq!(
            budget_keys("u-1", "::ffff:198.51.100.7")[1],
            "waits:client:198.51.100.7"
        );
        assert_eq!(budget_keys("u-1", "unknown")[1], "waits:client:unknown");
    }

    #[test]
    fn the_wait_is_read_from_the_query_and_can_be_removed_from_it() {
        assert_eq!(requested_wait_ms("wait_ms=10000"), Some(10_000));
        assert_eq!(requested_wait_ms("x=1&wait_ms=250"), Some(250));
        assert_eq!(requested_wait_ms("wait_ms=0"), None);
        assert_eq!(requested_wait_ms("wait_ms=soon"), None);
        assert_eq!(requested_wait_ms("await_ms=5"), None);
        assert_eq!(requested_wait_ms(""), None);
        assert_eq!(without_wait("wait_ms=10000"), "");
        assert_eq!(without_wait("x=1&wait_ms=5&y=2"), "x=1&y=2");
        assert_eq!(without_wait("wait_ms&x=1"), "x=1");
        assert_eq!(without_wait("x=1"), "x=1");
    }
}
