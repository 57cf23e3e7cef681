//! Outbound connection pools (PostgreSQL, Redis) keyed by the address a guest passes,
//! bounded per component. The address is the guest's to choose within its allowed
//! hosts, so a component varying its query or database part must not be able to
//! make the host keep an unbounded number of pools: each component keeps at most
//! `per_component` addresses, and using one more lets go of its least recently used.
//! Components using the same address share its pool; a pool no component keeps is
//! dropped, which closes its idle connections (connections in use stay with their
//! instances until those finish).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Addresses (with their pools) each component may keep open.
pub const POOLS_PER_COMPONENT: usize = 8;

pub struct BoundedMap<V> {
    per_component: usize,
    state: Mutex<State<V>>,
}

struct State<V> {
    /// address → (value, the components keeping it).
    values: HashMap<String, (V, HashSet<String>)>,
    /// component → its addresses, least recently used first.
    kept: HashMap<String, Vec<String>>,
}

impl<V> Default for BoundedMap<V> {
    fn default() -> Self {
        Self::new(POOLS_PER_COMPONENT)
    }
}

impl<V> BoundedMap<V> {
    pub fn new(per_component: usize) -> Self {
        Self {
            per_component: per_component.max(1),
            state: Mutex::new(State {
                values: HashMap::new(),
                kept: HashMap::new(),
            }),
        }
    }
}

impl<V: Clone> BoundedMap<V> {
    /// The value for `address`, made by `create` when nobody keeps one; `component`
    /// keeps it from now on, letting go of its least recently used address when it
    /// is at its bound.
    pub fn get_or_create<E>(
        &self,
        component: &str,
        address: &str,
        create: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let value = match state.values.get(address) {
            Some((value, _)) => value.clone(),
            None => create()?,
        };
        let State { values, kept } = &mut *state;
        let addresses = kept.entry(component.to_string()).or_default();
        if let Some(at) = addresses.iter().position(|a| a == address) {
            let recent = addresses.remove(at);
            addresses.push(recent);
            return Ok(value);
        }
        addresses.push(address.to_string());
        values
            .entry(address.to_string())
            .or_insert_with(|| (value.clone(), HashSet::new()))
            .1
            .insert(component.to_string());
        if addresses.len() > self.per_component {
            let oldest = addresses.remove(0);
            if let Some((_, keepers)) = values.get_mut(&oldest) {
                keepers.remove(component);
                if keepers.is_empty() {
                    tracing::debug!(component, address = %oldest, "outbound pool dropped: no component keeps it");
                    values.remove(&oldest);
                }
            }
        }
        Ok(value)
    }

    /// How many addresses `component` keeps.
    #[cfg(test)]
    pub fn kept_by(&self, component: &str) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.kept.get(component).map_or(0, Vec::len)
    }

    /// How many values are kept in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(n: u32) -> impl FnOnce() -> Result<u32, ()> {
        move || Ok(n)
    }

    #[test]
    fn a_component_keeps_at_most_its_bound_dropping_the_least_recently_used() {
        let map = BoundedMap::new(2);
        assert_eq!(map.get_or_create("a", "x", make(1)), Ok(1));
        assert_eq!(map.get_or_create("a", "y", make(2)), Ok(2));
        // Using x makes y the oldest.
        assert_eq!(map.get_or_create("a", "x", make(99)), Ok(1), "kept, not made again");
        assert_eq!(map.get_or_create("a", "z", make(3)), Ok(3));
        assert_eq!(map.kept_by("a"), 2);
        assert_eq!(map.get_or_create("a", "x", make(98)), Ok(1), "x survived");
        assert_eq!(
            map.get_or_create("a", "y", make(4)),
            Ok(4),
            "y was dropped and is made anew"
        );
    }

    #[test]
    fn components_share_an_address_and_do_not_evict_each_other() {
        let map = BoundedMap::new(1);
        map.get_or_create("a", "x", make(1)).unwrap();
        assert_eq!(map.get_or_create("b", "x", make(99)), Ok(1), "shared");
        for n in 0..10 {
            map.get_or_create("b", &format!("b{n}"), make(n)).unwrap();
        }
        assert_eq!(map.get_or_create("a", "x", make(99)), Ok(1), "a still keeps x");
        assert_eq!(map.kept_by("b"), 1);
        assert_eq!(map.len(), 2, "x and b's last address");
    }

    #[test]
    fn a_failed_create_keeps_nothing() {
        let map: BoundedMap<u32> = BoundedMap::new(2);
        assert_eq!(map.get_or_create("a", "x", || Err("refused")), Err("refused"));
        assert_eq!(map.kept_by("a"), 0);
    }
}
