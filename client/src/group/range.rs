//! Kafka's `range` assignor.

use std::collections::BTreeMap;

use super::assignor::{
    Assignor, GroupAssignment, MemberSubscription, RebalanceProtocol, empty_assignment,
    kafka_member_order, unique_members,
};

/// `range`: per topic, the partitions in contiguous ranges over the members
/// subscribed to it, in Kafka's member order (static members by group
/// instance id first, then the others by member id); the first
/// `partitions % members` members get one partition more. As Kafka's
/// `RangeAssignor`, balanced per topic but not across topics: the first
/// members get the extra partition of every topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeAssignor;

impl Assignor for RangeAssignor {
    fn name(&self) -> &'static str {
        "range"
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
        for (topic, &partitions) in partitions_per_topic {
            let subscribers: Vec<_> = members.iter().filter(|m| m.subscribes_to(topic)).collect();
            let Ok(count) = u32::try_from(subscribers.len()) else {
                continue;
            };
            if count == 0 {
                continue;
            }
            let (each, extra) = (partitions / count, partitions % count);
            for (i, member) in (0u32..).zip(subscribers) {
                let start = each * i + i.min(extra);
                let len = each + u32::from(i < extra);
                if let Some(list) = assignment.get_mut(&member.member_id) {
                    list.extend((start..start + len).map(|p| (topic.clone(), p)));
                }
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
    fn seven_partitions_over_three_members_are_three_two_two() {
        let members = [
            member("m1", &["t"]),
            member("m2", &["t"]),
            member("m3", &["t"]),
        ];
        let out = RangeAssignor.assign(&members, &testing::topics(&[("t", 7)]));
        assert_eq!(out["m1"], partitions_of("t", &[0, 1, 2]));
        assert_eq!(out["m2"], partitions_of("t", &[3, 4]));
        assert_eq!(out["m3"], partitions_of("t", &[5, 6]));
    }

    #[test]
    fn each_topic_is_divided_among_its_own_subscribers() {
        let members = [
            member("m1", &["a", "b"]),
            member("m2", &["a"]),
            member("m3", &["b"]),
        ];
        let out = RangeAssignor.assign(&members, &testing::topics(&[("a", 3), ("b", 4)]));
        let mut m1 = partitions_of("a", &[0, 1]);
        m1.extend(partitions_of("b", &[0, 1]));
        assert_eq!(out["m1"], m1);
        assert_eq!(out["m2"], partitions_of("a", &[2]));
        assert_eq!(out["m3"], partitions_of("b", &[2, 3]));
    }

    #[test]
    fn extra_partitions_of_every_topic_go_to_the_first_members() {
        let members = [member("m2", &["a", "b"]), member("m1", &["a", "b"])];
        let out = RangeAssignor.assign(&members, &testing::topics(&[("a", 1), ("b", 3)]));
        let mut m1 = partitions_of("a", &[0]);
        m1.extend(partitions_of("b", &[0, 1]));
        assert_eq!(out["m1"], m1);
        assert_eq!(out["m2"], partitions_of("b", &[2]));
    }

    #[test]
    fn static_members_are_ordered_by_group_instance_id() {
        let mut z = member("a", &["t"]);
        z.group_instance_id = Some("z".into());
        let mut y = member("b", &["t"]);
        y.group_instance_id = Some("y".into());
        let members = [z, y, member("c", &["t"])];
        let out = RangeAssignor.assign(&members, &testing::topics(&[("t", 4)]));
        assert_eq!(out["b"], partitions_of("t", &[0, 1]));
        assert_eq!(out["a"], partitions_of("t", &[2]));
        assert_eq!(out["c"], partitions_of("t", &[3]));
    }

    #[test]
    fn members_with_nothing_to_do_get_an_empty_entry() {
        let members = [
            member("m1", &["t"]),
            member("m2", &["t"]),
            member("m3", &["gone"]),
        ];
        let out = RangeAssignor.assign(&members, &testing::topics(&[("t", 1)]));
        assert_eq!(out["m1"], partitions_of("t", &[0]));
        assert!(out["m2"].is_empty());
        assert!(out["m3"].is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn range_assigns_every_subscribed_partition_once_balanced_per_topic(
            group in testing::group(),
        ) {
            let out = RangeAssignor.assign(&group.members, &group.partitions);
            testing::check_assignment(&group, &out, true)?;
            testing::check_balanced_per_topic(&group, &out)?;
        }

        #[test]
        fn range_is_deterministic_whatever_the_member_order(
            group in testing::group(),
            seed in any::<u64>(),
        ) {
            let out = RangeAssignor.assign(&group.members, &group.partitions);
            let shuffled = testing::shuffled(&group.members, seed);
            prop_assert_eq!(RangeAssignor.assign(&shuffled, &group.partitions), out);
        }
    }
}
