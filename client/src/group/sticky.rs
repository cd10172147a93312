//! The `cooperative-sticky` assignor (KIP-54 stickiness, KIP-429
//! cooperative hand-over).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::assignor::{
    Assignor, GroupAssignment, MemberSubscription, RebalanceProtocol, empty_assignment,
    unique_members,
};

/// `cooperative-sticky`: balanced, sticky, and cooperative.
///
/// - **Balanced**: no partition could move from a member to another that
///   subscribes to its topic and has two or more fewer partitions; in
///   particular members with the same subscription differ by one at most.
///   (The assignment minimises the sum of squared partition counts.)
/// - **Sticky**: a member keeps the partitions it owns, as far as balance
///   allows; when partitions must move, those a member does not own move
///   first.
/// - **Cooperative**: a partition that another member still owns is never
///   given to a new owner in the same generation. It is only revoked (left
///   out of every assignment); its owner gives it up, joins again, and the
///   next rebalance, seeing it owned by nobody, assigns it. A partition
///   claimed by more than one member (one of them stale) is revoked from
///   all of them the same way.
///
/// With no membership or metadata change, the round after that moves
/// nothing. Members are taken in member-id order.
///
/// Cost: each step finds a cheapest (fewest owned partitions moved) chain
/// of moves from a fuller to an emptier member, about `members² × topics`
/// work for each distinct partition count, and there is a step for each
/// partition that moves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CooperativeStickyAssignor;

impl Assignor for CooperativeStickyAssignor {
    fn name(&self) -> &'static str {
        "cooperative-sticky"
    }

    fn rebalance_protocol(&self) -> RebalanceProtocol {
        RebalanceProtocol::Cooperative
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, u32>,
    ) -> GroupAssignment {
        let members = unique_members(members, |a, b| a.member_id.cmp(&b.member_id));
        let mut plan = Plan::new(&members, partitions_per_topic);
        plan.keep_owned();
        plan.place_the_rest();
        plan.balance();
        plan.cooperative(&members)
    }
}

/// Indices: members by position in member-id order, topics by position in
/// topic order, partitions by position in (topic, partition) order.
struct Plan {
    topics: Vec<String>,
    /// Each partition's topic index and number.
    parts: Vec<(usize, u32)>,
    /// `subscribes[m][t]`: member `m` subscribes to topic `t`.
    subscribes: Vec<Vec<bool>>,
    /// Each partition's claimants: the members whose subscription lists it
    /// as owned (whether or not they still subscribe to its topic).
    claimants: Vec<Vec<usize>>,
    /// Each partition's sole claimant, if it has exactly one.
    sole_owner: Vec<Option<usize>>,
    /// Each partition's holder in the plan.
    holder: Vec<Option<usize>>,
    /// Each member's partition count in the plan.
    load: Vec<usize>,
    /// `held[m][t][owned]`: the partitions of topic `t` member `m` holds in
    /// the plan, those it does not own (`[0]`) and those it owns (`[1]`).
    held: Vec<Vec<[BTreeSet<usize>; 2]>>,
}

impl Plan {
    fn new(members: &[&MemberSubscription], partitions_per_topic: &BTreeMap<String, u32>) -> Plan {
        let topics: Vec<String> = partitions_per_topic
            .iter()
            .filter(|(t, n)| **n > 0 && members.iter().any(|m| m.subscribes_to(t)))
            .map(|(t, _)| t.clone())
            .collect();
        let subscribes = members
            .iter()
            .map(|m| topics.iter().map(|t| m.subscribes_to(t)).collect())
            .collect();
        let mut parts = Vec::new();
        let mut index = BTreeMap::new();
        for (ti, topic) in topics.iter().enumerate() {
            for p in 0..partitions_per_topic[topic] {
                index.insert((topic.as_str(), p), parts.len());
                parts.push((ti, p));
            }
        }
        let mut claimants = vec![Vec::new(); parts.len()];
        for (mi, m) in members.iter().enumerate() {
            for (topic, p) in m.subscription.owned() {
                if let Some(&pi) = index.get(&(topic.as_str(), p)) {
                    claimants[pi].push(mi);
                }
            }
        }
        let sole_owner = claimants
            .iter()
            .map(|c| match c.as_slice() {
                [only] => Some(*only),
                _ => None,
            })
            .collect();
        Plan {
            holder: vec![None; parts.len()],
            load: vec![0; members.len()],
            held: vec![vec![[BTreeSet::new(), BTreeSet::new()]; topics.len()]; members.len()],
            topics,
            parts,
            subscribes,
            claimants,
            sole_owner,
        }
    }

    /// Whether member `m` owns partition `pi` alone: 1 if so, else 0.
    fn owned_by(&self, pi: usize, m: usize) -> usize {
        usize::from(self.sole_owner[pi] == Some(m))
    }

    fn eligible(&self, m: usize, pi: usize) -> bool {
        self.subscribes[m][self.parts[pi].0]
    }

    fn give(&mut self, pi: usize, to: usize) {
        let topic = self.parts[pi].0;
        if let Some(from) = self.holder[pi] {
            let owned = self.owned_by(pi, from);
            self.held[from][topic][owned].remove(&pi);
            self.load[from] -= 1;
        }
        let owned = self.owned_by(pi, to);
        self.holder[pi] = Some(to);
        self.held[to][topic][owned].insert(pi);
        self.load[to] += 1;
    }

    /// Sticky start: each partition its sole owner still subscribes to
    /// stays with it.
    fn keep_owned(&mut self) {
        for pi in 0..self.parts.len() {
            if let Some(owner) = self.sole_owner[pi].filter(|&o| self.eligible(o, pi)) {
                self.give(pi, owner);
            }
        }
    }

    /// Every other partition goes to the least loaded member subscribed to
    /// its topic (the first in member order on ties). Each partition here
    /// has one: topics without subscribers were left out.
    fn place_the_rest(&mut self) {
        for pi in 0..self.parts.len() {
            if self.holder[pi].is_some() {
                continue;
            }
            let best = (0..self.load.len())
                .filter(|&m| self.eligible(m, pi))
                .min_by_key(|&m| (self.load[m], m));
            if let Some(m) = best {
                self.give(pi, m);
            }
        }
    }

    /// The partition of `from` to move to `to`, and its cost: 0 for one
    /// `from` does not own (the first), 1 for one it does (stickiness lost;
    /// the last, so members keep their lowest partitions).
    fn cheapest_move(&self, from: usize, to: usize) -> Option<(u32, usize)> {
        let mut owned = None;
        for (topic, [not_owned, is_owned]) in self.held[from].iter().enumerate() {
            if !self.subscribes[to][topic] {
                continue;
            }
            if let Some(&pi) = not_owned.first() {
                return Some((0, pi));
            }
            if let Some(&pi) = is_owned.last() {
                owned = Some((1, pi));
            }
        }
        owned
    }

    /// Moves partitions along chains from fuller to emptier members until
    /// no chain lowers the sum of squared counts. Such an assignment is
    /// optimal for that sum (Harvey, Ladner, Lovász and Tamir, "Semi-matchings
    /// for bipartite graphs and load balancing"), hence balanced. Each chain
    /// lowers the sum by at least 2, so this ends.
    fn balance(&mut self) {
        while let Some(chain) = self.best_chain() {
            for (pi, to) in chain {
                self.give(pi, to);
            }
        }
    }

    /// The chain of moves (partition, new holder), from a member with `L`
    /// partitions to one with at most `L − 2`, that moves the fewest owned
    /// partitions; among those, the one from the fullest level. `None` when
    /// there is none.
    fn best_chain(&self) -> Option<Vec<(usize, usize)>> {
        let loads = &self.load;
        let min_load = *loads.iter().min()?;
        let levels: BTreeSet<usize> = loads.iter().copied().collect();
        let mut best: Option<(u32, Vec<(usize, usize)>)> = None;
        for &level in levels.iter().rev() {
            if level < min_load + 2 {
                break;
            }
            let Some((cost, chain)) = self.cheapest_chain_from_level(level, loads) else {
                continue;
            };
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                let done = cost == 0;
                best = Some((cost, chain));
                if done {
                    break;
                }
            }
        }
        best.map(|(_, chain)| chain)
    }

    /// 0-1 breadth-first search from every member with at least `level`
    /// partitions, to the members with at most `level − 2`.
    fn cheapest_chain_from_level(
        &self,
        level: usize,
        loads: &[usize],
    ) -> Option<(u32, Vec<(usize, usize)>)> {
        let n = loads.len();
        let mut dist: Vec<Option<u32>> = vec![None; n];
        // (previous member, partition moved from it)
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut queue = VecDeque::new();
        for m in (0..n).filter(|&m| loads[m] >= level) {
            dist[m] = Some(0);
            queue.push_back(m);
        }
        while let Some(u) = queue.pop_front() {
            let Some(du) = dist[u] else { continue };
            for v in 0..n {
                if v == u {
                    continue;
                }
                let Some((cost, pi)) = self.cheapest_move(u, v) else {
                    continue;
                };
                let dv = du + cost;
                if dist[v].is_none_or(|d| dv < d) {
                    dist[v] = Some(dv);
                    parent[v] = Some((u, pi));
                    if cost == 0 {
                        queue.push_front(v);
                    } else {
                        queue.push_back(v);
                    }
                }
            }
        }
        let target = (0..n)
            .filter(|&m| loads[m] + 2 <= level)
            .filter_map(|m| dist[m].map(|d| (d, loads[m], m)))
            .min()?;
        let mut chain = Vec::new();
        let mut at = target.2;
        // A chain visits each member once at most.
        while let Some((prev, pi)) = parent[at] {
            chain.push((pi, at));
            at = prev;
            if chain.len() > n {
                debug_assert!(false, "a cycle in the search tree");
                return None;
            }
        }
        // Applied from the source end, each member still holds the
        // partition it passes on.
        chain.reverse();
        Some((target.0, chain))
    }

    /// The plan, less every partition whose new holder is not its only
    /// owner while some member owns it: those are revoked this generation
    /// and assigned in the next.
    fn cooperative(&self, members: &[&MemberSubscription]) -> GroupAssignment {
        let mut out = empty_assignment(members);
        for (pi, holder) in self.holder.iter().enumerate() {
            let Some(h) = *holder else { continue };
            let free = match self.claimants[pi].as_slice() {
                [] => true,
                [only] => *only == h,
                _ => false,
            };
            if free && let Some(list) = out.get_mut(&members[h].member_id) {
                let (ti, p) = self.parts[pi];
                list.push((self.topics[ti].clone(), p));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::testing::{self, after, member, owning, partitions_of};
    use proptest::prelude::*;

    fn assign(members: &[MemberSubscription], topics: &[(&str, u32)]) -> GroupAssignment {
        CooperativeStickyAssignor.assign(members, &testing::topics(topics))
    }

    #[test]
    fn a_new_group_is_assigned_in_one_round_balanced() {
        let members = [
            member("m1", &["t"]),
            member("m2", &["t"]),
            member("m3", &["t"]),
        ];
        let out = assign(&members, &[("t", 7)]);
        let counts: Vec<usize> = out.values().map(Vec::len).collect();
        assert_eq!(counts, [3, 2, 2]);
    }

    #[test]
    fn a_joining_member_gets_its_share_only_in_the_second_round() {
        let m1_owns: Vec<(&str, u32)> = (0..6).map(|p| ("t", p)).collect();
        let members = [owning("m1", &["t"], &m1_owns), member("m2", &["t"])];
        let first = assign(&members, &[("t", 6)]);
        // Round 1: m1 keeps half and revokes half; m2 gets nothing yet.
        assert_eq!(first["m1"], partitions_of("t", &[0, 1, 2]));
        assert!(first["m2"].is_empty());
        // Round 2: m1 has revoked; the free half goes to m2.
        let second = assign(&after(&members, &first), &[("t", 6)]);
        assert_eq!(second["m1"], partitions_of("t", &[0, 1, 2]));
        assert_eq!(second["m2"], partitions_of("t", &[3, 4, 5]));
    }

    #[test]
    fn a_leaving_members_partitions_are_spread_and_nobody_else_moves() {
        let members = [
            owning("m1", &["t"], &[("t", 0), ("t", 1)]),
            owning("m2", &["t"], &[("t", 2), ("t", 3)]),
            // m3 left, owning 4 and 5.
        ];
        let out = assign(&members, &[("t", 6)]);
        assert_eq!(out["m1"], partitions_of("t", &[0, 1, 4]));
        assert_eq!(out["m2"], partitions_of("t", &[2, 3, 5]));
    }

    #[test]
    fn a_partition_claimed_by_two_members_is_revoked_from_both_first() {
        let members = [
            owning("m1", &["t"], &[("t", 0), ("t", 1)]),
            owning("m2", &["t"], &[("t", 1), ("t", 2)]),
        ];
        let first = assign(&members, &[("t", 4)]);
        assert_eq!(first["m1"], partitions_of("t", &[0]));
        assert_eq!(first["m2"], partitions_of("t", &[2, 3]));
        let second = assign(&after(&members, &first), &[("t", 4)]);
        assert_eq!(second["m1"], partitions_of("t", &[0, 1]));
        assert_eq!(second["m2"], partitions_of("t", &[2, 3]));
    }

    #[test]
    fn an_unsubscribed_topics_partitions_are_revoked_before_they_move() {
        let members = [
            owning("m1", &["b"], &[("a", 0), ("b", 0)]),
            member("m2", &["a", "b"]),
        ];
        let first = assign(&members, &[("a", 1), ("b", 1)]);
        assert_eq!(first["m1"], partitions_of("b", &[0]));
        assert!(first["m2"].is_empty());
        let second = assign(&after(&members, &first), &[("a", 1), ("b", 1)]);
        assert_eq!(second["m2"], partitions_of("a", &[0]));
    }

    #[test]
    fn balance_reaches_through_a_member_of_another_subscription() {
        // m1 takes only `a`, m3 only `b`, m2 both. Counts 1, 2, 3: no single
        // move helps (m3 cannot take `a`, nor m1 `b`), but the chain
        // m3 → m2 (a `b`) and m2 → m1 (an `a`) makes them 2, 2, 2.
        let members = [
            owning("m1", &["a"], &[("a", 0)]),
            owning("m2", &["a", "b"], &[("a", 1), ("b", 0)]),
            owning("m3", &["b"], &[("b", 1), ("b", 2), ("b", 3)]),
        ];
        let topics = [("a", 2), ("b", 4)];
        let first = assign(&members, &topics);
        // Both moved partitions are owned, so both are only revoked.
        assert_eq!(first["m1"], partitions_of("a", &[0]));
        assert_eq!(first["m2"], partitions_of("b", &[0]));
        assert_eq!(first["m3"], partitions_of("b", &[1, 2]));
        let second = assign(&after(&members, &first), &topics);
        assert_eq!(second["m1"], partitions_of("a", &[0, 1]));
        assert_eq!(second["m2"], partitions_of("b", &[0, 3]));
        assert_eq!(second["m3"], partitions_of("b", &[1, 2]));
        assert_eq!(assign(&after(&members, &second), &topics), second);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn two_rounds_assign_everything_balanced_and_a_third_moves_nothing(
            group in testing::group(),
        ) {
            let first = CooperativeStickyAssignor.assign(&group.members, &group.partitions);
            testing::check_assignment(&group, &first, false)?;

            let second_members = after(&group.members, &first);
            let second = CooperativeStickyAssignor.assign(&second_members, &group.partitions);
            let second_group = testing::Group { members: second_members, ..group.clone() };
            testing::check_assignment(&second_group, &second, true)?;
            testing::check_no_improving_move(&second_group, &second)?;
            // The second round only adds: nothing is revoked again.
            for (member, list) in &first {
                for tp in list {
                    prop_assert!(second[member].contains(tp), "{member} lost {tp:?}");
                }
            }

            let third_members = after(&group.members, &second);
            let third = CooperativeStickyAssignor.assign(&third_members, &group.partitions);
            prop_assert_eq!(third, second);
        }

        #[test]
        fn no_partition_is_given_to_a_new_owner_while_another_member_owns_it(
            group in testing::group(),
        ) {
            let out = CooperativeStickyAssignor.assign(&group.members, &group.partitions);
            for (member, list) in &out {
                for tp in list {
                    for other in group.members.iter().filter(|m| &m.member_id != member) {
                        prop_assert!(
                            !other.subscription.owned().contains(tp),
                            "{tp:?} given to {member} while {} owns it",
                            other.member_id
                        );
                    }
                }
            }
        }

        #[test]
        fn with_equal_subscriptions_each_member_keeps_its_fair_share_of_what_it_owns(
            group in testing::group().prop_map(testing::with_equal_subscriptions),
        ) {
            let out = CooperativeStickyAssignor.assign(&group.members, &group.partitions);
            let total = testing::subscribed_partitions(&group).len();
            let fair = total / group.members.len();
            for m in &group.members {
                let owned = m.subscription.owned();
                let contested_or_gone = |tp: &(String, u32)| {
                    !m.subscribes_to(&tp.0)
                        || group.partitions.get(&tp.0).is_none_or(|n| tp.1 >= *n)
                        || group
                            .members
                            .iter()
                            .any(|o| o.member_id != m.member_id && o.subscription.owned().contains(tp))
                };
                let keepable = owned.iter().filter(|tp| !contested_or_gone(tp)).count();
                let kept = out[&m.member_id].iter().filter(|tp| owned.contains(*tp)).count();
                prop_assert!(
                    kept >= keepable.min(fair),
                    "{} kept {kept} of {keepable} (fair share {fair})",
                    m.member_id
                );
            }
        }

        #[test]
        fn cooperative_sticky_is_deterministic_whatever_the_member_order(
            group in testing::group(),
            seed in any::<u64>(),
        ) {
            let out = CooperativeStickyAssignor.assign(&group.members, &group.partitions);
            let shuffled = testing::shuffled(&group.members, seed);
            prop_assert_eq!(CooperativeStickyAssignor.assign(&shuffled, &group.partitions), out);
        }
    }
}
