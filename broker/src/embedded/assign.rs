//! Who should own which partition. Every member computes the same answer from the same
//! rows (members sorted by id, partitions sorted by topic then number), so the group
//! agrees without a coordinator; leases decide who actually owns a partition right now.

use std::collections::BTreeSet;

use crate::TopicPartition;

/// A live member of a group and the topics it subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Member {
    pub id: String,
    pub topics: BTreeSet<String>,
}

/// The partitions `member` should own. Round-robin like Kafka's `RoundRobinAssignor`:
/// partitions in order go to members in turn, skipping members not subscribed to the
/// partition's topic. With identical subscriptions partition `i` goes to member `i % n`.
///
/// `members` must be sorted by id and `partitions` sorted; both come from the store so.
pub(super) fn share_of(member: &str, members: &[Member], partitions: &[TopicPartition]) -> BTreeSet<TopicPartition> {
    let mut share = BTreeSet::new();
    let mut next = 0;
    for tp in partitions {
        let owner = (0..members.len())
            .map(|step| (next + step) % members.len())
            .find(|&i| members[i].topics.contains(&tp.topic));
        if let Some(i) = owner {
            if members[i].id == member {
                share.insert(tp.clone());
            }
            next = i + 1;
        }
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            id: id.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter().map(|(t, p)| TopicPartition::new(*t, *p)).collect()
    }

    #[test]
    fn identical_subscriptions_split_round_robin() {
        let members = [member("a", &["t"]), member("b", &["t"])];
        let partitions = tps(&[("t", 0), ("t", 1), ("t", 2)]);
        let a = share_of("a", &members, &partitions);
        let b = share_of("b", &members, &partitions);
        assert_eq!(a, tps(&[("t", 0), ("t", 2)]).into_iter().collect());
        assert_eq!(b, tps(&[("t", 1)]).into_iter().collect());
    }

    #[test]
    fn every_partition_has_exactly_one_owner_across_topics() {
        let members = [
            member("a", &["x", "y"]),
            member("b", &["x", "y"]),
            member("c", &["x", "y"]),
        ];
        let partitions = tps(&[("x", 0), ("x", 1), ("x", 2), ("x", 3), ("y", 0), ("y", 1)]);
        let shares: Vec<_> = members.iter().map(|m| share_of(&m.id, &members, &partitions)).collect();
        for tp in &partitions {
            assert_eq!(shares.iter().filter(|s| s.contains(tp)).count(), 1, "{tp}");
        }
        assert!(shares.iter().all(|s| s.len() == 2), "{shares:?}");
    }

    #[test]
    fn members_only_get_topics_they_subscribed_to() {
        let members = [member("a", &["x"]), member("b", &["x", "y"])];
        let partitions = tps(&[("x", 0), ("x", 1), ("y", 0), ("y", 1)]);
        assert_eq!(
            share_of("a", &members, &partitions),
            tps(&[("x", 0)]).into_iter().collect()
        );
        assert_eq!(
            share_of("b", &members, &partitions),
            tps(&[("x", 1), ("y", 0), ("y", 1)]).into_iter().collect()
        );
        assert!(share_of("gone", &members, &partitions).is_empty());
    }
}
