//! Kafka's `roundrobin` assignor.

use std::collections::BTreeMap;

use super::assignor::{
    Assignor, GroupAssignment, MemberSubscription, RebalanceProtocol, empty_assignment,
    kafka_member_order, unique_members,
};

/// `roundrobin`: every subscribed (topic, partition), in order, dealt in
/// turn over the members in Kafka's member order (static members by group
/// instance id first, then the others by member id), a member not
/// subscribed to a partition's topic being passed over for it. As Kafka's
/// `RoundRobinAssignor`: with equal subscriptions every member's count is
/// within one of the others'; with different subscriptions the turn can
/// pass over a member while it serves another topic, so counts may differ
/// more (Kafka documents the same).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinAssignor;

impl Assignor for RoundRobinAssignor {
    fn name(&self) -> &'static str {
        "roundrobin"
    }

    fn rebalance_protocol(&self) -> RebalanceProtocol {
        RebalanceProtocol::Eager
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, u32>,
    ) -> GroupAssignment {
        let members = unique_members(members, kafka_member_order);
        let mut assignment = empty_assignment(&members);
        let mut next = 0usize;
        for (topic, &partitions) in partitions_per_topic {
            // Checked first, so the search below always ends.
            if !members.iter().any(|m| m.subscribes_to(topic)) {
                continue;
            }
            for partition in 0..partitions {
                while !members[next].subscribes_to(topic) {
                    next = (next + 1) % members.len();
                }
                if let Some(list) = assignment.get_mut(&members[next].member_id) {
                    list.push((topic.clone(), partition));
                }
                next = (next + 1) % members.len();
            }
        }
        assignment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::testing::{self, member, partitions_of};
    use proptest::prelude::*;

    #[test]
    fn partitions_are_dealt_in_turn_across_topics() {
        let members = [member("m1", &["a", "b"]), member("m2", &["a", "b"])];
        let out = RoundRobinAssignor.assign(&members, &testing::topics(&[("a", 3), ("b", 2)]));
        let mut m1 = partitions_of("a", &[0, 2]);
        m1.extend(partitions_of("b", &[1]));
        let mut m2 = partitions_of("a", &[1]);
        m2.extend(partitions_of("b", &[0]));
        assert_eq!(out["m1"], m1);
        assert_eq!(out["m2"], m2);
    }

    #[test]
    fn different_subscriptions_can_leave_members_of_equal_subscription_uneven() {
        // While c takes both partitions of t1 the turn passes over b, and
        // comes back to a for t2: a gets 2, b nothing, as in Kafka.
        let members = [
            member("a", &["t0", "t2"]),
            member("b", &["t0", "t2"]),
            member("c", &["t1"]),
        ];
        let out = RoundRobinAssignor.assign(
            &members,
            &testing::topics(&[("t0", 1), ("t1", 2), ("t2", 1)]),
        );
        let mut a = partitions_of("t0", &[0]);
        a.extend(partitions_of("t2", &[0]));
        assert_eq!(out["a"], a);
        assert!(out["b"].is_empty());
        assert_eq!(out["c"], partitions_of("t1", &[0, 1]));
    }

    #[test]
    fn a_member_is_passed_over_for_topics_it_does_not_subscribe_to() {
        // Kafka's documented example: C0 [t0], C1 [t0, t1], C2 [t0, t1, t2];
        // t0 has 1 partition, t1 2, t2 3.
        let members = [
            member("c0", &["t0"]),
            member("c1", &["t0", "t1"]),
            member("c2", &["t0", "t1", "t2"]),
        ];
        let out = RoundRobinAssignor.assign(
            &members,
            &testing::topics(&[("t0", 1), ("t1", 2), ("t2", 3)]),
        );
        assert_eq!(out["c0"], partitions_of("t0", &[0]));
        assert_eq!(out["c1"], partitions_of("t1", &[0]));
        let mut c2 = partitions_of("t1", &[1]);
        c2.extend(partitions_of("t2", &[0, 1, 2]));
        assert_eq!(out["c2"], c2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn roundrobin_assigns_every_subscribed_partition_exactly_once(group in testing::group()) {
            let out = RoundRobinAssignor.assign(&group.members, &group.partitions);
            testing::check_assignment(&group, &out, true)?;
        }

        #[test]
        fn roundrobin_is_balanced_when_subscriptions_are_equal(
            group in testing::group().prop_map(testing::with_equal_subscriptions),
        ) {
            let out = RoundRobinAssignor.assign(&group.members, &group.partitions);
            testing::check_assignment(&group, &out, true)?;
            testing::check_balanced_by_subscription(&group, &out)?;
        }

        #[test]
        fn roundrobin_is_deterministic_whatever_the_member_order(
            group in testing::group(),
            seed in any::<u64>(),
        ) {
            let out = RoundRobinAssignor.assign(&group.members, &group.partitions);
            let shuffled = testing::shuffled(&group.members, seed);
            prop_assert_eq!(RoundRobinAssignor.assign(&shuffled, &group.partitions), out);
        }
    }
}
