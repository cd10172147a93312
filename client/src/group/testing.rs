//! Test support for the assignors: small builders, random groups, and the
//! checks every assignor's properties share.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::Subscription;
use super::assignor::{GroupAssignment, MemberSubscription};

/// A member subscribed to `topics`, owning nothing.
pub(crate) fn member(id: &str, topics: &[&str]) -> MemberSubscription {
    owning(id, topics, &[])
}

/// A member subscribed to `topics`, owning `owned`.
pub(crate) fn owning(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSubscription {
    let owned: Vec<(String, u32)> = owned.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect();
    MemberSubscription::new(id, Subscription::new(topics.iter().copied(), &owned))
}

/// (topic, p) for each of `partitions`.
pub(crate) fn partitions_of(topic: &str, partitions: &[u32]) -> Vec<(String, u32)> {
    partitions.iter().map(|p| (topic.to_owned(), *p)).collect()
}

/// Partition counts per topic.
pub(crate) fn topics(counts: &[(&str, u32)]) -> BTreeMap<String, u32> {
    counts.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

/// The members as they would join the next generation: each owning what
/// `assignment` gave it.
pub(crate) fn after(
    members: &[MemberSubscription],
    assignment: &GroupAssignment,
) -> Vec<MemberSubscription> {
    members
        .iter()
        .map(|m| {
            let mut next = m.clone();
            let owned = assignment.get(&m.member_id).cloned().unwrap_or_default();
            next.subscription = Subscription::new(m.subscription.topics.clone(), &owned);
            next
        })
        .collect()
}

/// A random group and its topics' partition counts.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) members: Vec<MemberSubscription>,
    pub(crate) partitions: BTreeMap<String, u32>,
}

const GHOST: &str = "ghost";

/// 1–8 members with distinct ids (some static), 1–4 topics of 0–16
/// partitions, random subscriptions (sometimes to a topic that does not
/// exist), and random owned partitions: mostly one owner per partition,
/// some partitions claimed by two members, some owned partitions of topics
/// the member no longer subscribes to or that do not exist.
pub(crate) fn group() -> impl Strategy<Value = Group> {
    (1usize..=8, prop::collection::vec(0u32..=16, 1..=4))
        .prop_flat_map(|(n_members, counts)| {
            let n_topics = counts.len();
            let total = counts.iter().sum::<u32>() as usize;
            (
                Just(counts),
                prop::collection::btree_set("[a-z]{1,3}", n_members),
                prop::collection::vec(prop::option::weighted(0.3, "[a-c]"), n_members),
                prop::collection::vec(
                    prop::collection::vec(any::<bool>(), n_topics + 1),
                    n_members,
                ),
                prop::collection::vec(prop::option::weighted(0.6, 0..n_members), total),
                prop::collection::vec((0..n_members, 0..total.max(1)), 0..4),
            )
        })
        .prop_map(
            |(counts, ids, instances, subscribed, owner, extra_claims)| {
                let partitions: BTreeMap<String, u32> = counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("t{i}"), *n))
                    .collect();
                let all: Vec<(String, u32)> = partitions
                    .iter()
                    .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
                    .collect();
                let mut owned: Vec<Vec<(String, u32)>> = vec![Vec::new(); ids.len()];
                for (tp, o) in all.iter().zip(&owner) {
                    if let Some(o) = o {
                        owned[*o].push(tp.clone());
                    }
                }
                for (m, i) in extra_claims {
                    if let Some(tp) = all.get(i) {
                        owned[m].push(tp.clone());
                    }
                }
                let members = ids
                    .into_iter()
                    .zip(instances)
                    .zip(subscribed)
                    .zip(owned)
                    .map(|(((id, instance), subscribed), mut owned)| {
                        let mut topics: Vec<String> = (0..counts.len())
                            .filter(|i| subscribed[*i])
                            .map(|i| format!("t{i}"))
                            .collect();
                        if subscribed[counts.len()] {
                            topics.push(GHOST.to_owned());
                            owned.push((GHOST.to_owned(), 0));
                        }
                        MemberSubscription {
                            member_id: id,
                            group_instance_id: instance,
                            subscription: Subscription::new(topics, &owned),
                        }
                    })
                    .collect();
                Group {
                    members,
                    partitions,
                }
            },
        )
}

/// `group` with every member subscribed to the first member's topics (its
/// owned partitions unchanged).
pub(crate) fn with_equal_subscriptions(mut group: Group) -> Group {
    let topics = group.members[0].subscription.topics.clone();
    for m in &mut group.members {
        m.subscription.topics = topics.clone();
    }
    group
}

/// `members` in an order drawn from `seed`.
pub(crate) fn shuffled(members: &[MemberSubscription], seed: u64) -> Vec<MemberSubscription> {
    let mut v = members.to_vec();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// The topics `m` subscribes to that exist.
fn effective_topics<'a>(group: &'a Group, m: &MemberSubscription) -> BTreeSet<&'a str> {
    group
        .partitions
        .keys()
        .filter(|t| m.subscribes_to(t))
        .map(String::as_str)
        .collect()
}

/// Every partition of an existing topic some member subscribes to.
pub(crate) fn subscribed_partitions(group: &Group) -> BTreeSet<(String, u32)> {
    group
        .partitions
        .iter()
        .filter(|(t, _)| group.members.iter().any(|m| m.subscribes_to(t)))
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect()
}

/// Every member has an entry, in order without duplicates; every partition
/// exists, is of a topic its member subscribes to, and is given to one
/// member at most, or (`complete`) to exactly one.
pub(crate) fn check_assignment(
    group: &Group,
    out: &GroupAssignment,
    complete: bool,
) -> Result<(), TestCaseError> {
    let ids: BTreeSet<&str> = group.members.iter().map(|m| m.member_id.as_str()).collect();
    let keys: BTreeSet<&str> = out.keys().map(String::as_str).collect();
    prop_assert_eq!(keys, ids);
    let mut seen = BTreeSet::new();
    for m in &group.members {
        let list = &out[&m.member_id];
        prop_assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "{list:?} is not in order"
        );
        for (topic, p) in list {
            prop_assert!(m.subscribes_to(topic), "{} got {topic}", m.member_id);
            prop_assert!(group.partitions.get(topic).is_some_and(|n| p < n));
            prop_assert!(seen.insert((topic.clone(), *p)), "{topic}/{p} given twice");
        }
    }
    if complete {
        prop_assert_eq!(seen, subscribed_partitions(group));
    }
    Ok(())
}

fn load(out: &GroupAssignment, m: &MemberSubscription) -> usize {
    out[&m.member_id].len()
}

/// Per topic, its subscribers' counts of its partitions differ by one at
/// most.
pub(crate) fn check_balanced_per_topic(
    group: &Group,
    out: &GroupAssignment,
) -> Result<(), TestCaseError> {
    for topic in group.partitions.keys() {
        let counts: Vec<usize> = group
            .members
            .iter()
            .filter(|m| m.subscribes_to(topic))
            .map(|m| out[&m.member_id].iter().filter(|(t, _)| t == topic).count())
            .collect();
        if let (Some(lo), Some(hi)) = (counts.iter().min(), counts.iter().max()) {
            prop_assert!(hi - lo <= 1, "{topic}: {counts:?}");
        }
    }
    Ok(())
}

/// Members subscribed to the same (existing) topics have counts within one
/// of each other.
pub(crate) fn check_balanced_by_subscription(
    group: &Group,
    out: &GroupAssignment,
) -> Result<(), TestCaseError> {
    let mut by_class: BTreeMap<BTreeSet<&str>, Vec<usize>> = BTreeMap::new();
    for m in &group.members {
        by_class
            .entry(effective_topics(group, m))
            .or_default()
            .push(load(out, m));
    }
    for (class, counts) in by_class {
        let (lo, hi) = (counts.iter().min(), counts.iter().max());
        if let (Some(lo), Some(hi)) = (lo, hi) {
            prop_assert!(hi - lo <= 1, "{class:?}: {counts:?}");
        }
    }
    Ok(())
}

/// No partition could move from a member to one with two or more fewer
/// partitions that subscribes to its topic (Kafka's balance check for
/// sticky assignors); this implies [`check_balanced_by_subscription`].
pub(crate) fn check_no_improving_move(
    group: &Group,
    out: &GroupAssignment,
) -> Result<(), TestCaseError> {
    check_balanced_by_subscription(group, out)?;
    for a in &group.members {
        for b in &group.members {
            if load(out, a) >= load(out, b) + 2 {
                let movable = out[&a.member_id].iter().find(|(t, _)| b.subscribes_to(t));
                prop_assert!(
                    movable.is_none(),
                    "{:?} could move from {} ({}) to {} ({})",
                    movable,
                    a.member_id,
                    load(out, a),
                    b.member_id,
                    load(out, b)
                );
            }
        }
    }
    Ok(())
}
