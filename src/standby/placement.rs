//! Which partitions a member keeps standby replicas of: pure logic over the group's view.
//!
//! librdkafka does not let an application plug in its own assignor, so standbys cannot be
//! *placed* (as Kafka Streams' assignor does); they are placed where the group's assignor is
//! *predicted* to move a partition when a member leaves:
//!
//! - a group of at most `replicas + 1` members: every member keeps every partition it does
//!   not own, so whoever inherits a partition has it warm (exact, whatever the assignor);
//! - a larger group: for each member that could leave, the assignment after it left is
//!   simulated, and a member keeps the partitions it would gain. `range` (the default with
//!   standby replicas) and `roundrobin` are simulated exactly: librdkafka orders static
//!   members by `group.instance.id` and needs nothing else. `cooperative-sticky` keeps
//!   every partition where it is and hands the leaver's partitions to the survivors owning
//!   fewest (ties by member id): which survivors receive them is predictable, but librdkafka
//!   takes the leaver's partitions in hash-map order, so which one gets which is not; the
//!   model assumes partition order, and a wrong guess costs that partition a full restore,
//!   nothing else. With `replicas` above 1, the `replicas - 1` members that follow the
//!   predicted heir (by name) keep a copy too.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::AssignmentStrategy;
use crate::offset::TopicPartition;

/// What a member knows of its group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupView {
    /// Live members' names (`group.instance.id`), sorted and distinct.
    pub(crate) members: Vec<String>,
    /// The last member that committed each partition (the sticky assignor's input); entries
    /// of members that are gone are ignored.
    pub(crate) owners: BTreeMap<TopicPartition, String>,
}

/// The partitions `me` keeps standby replicas of (never one it owns per `owned`).
pub(crate) fn standby_set(
    view: &GroupView,
    me: &str,
    partitions: &[TopicPartition],
    owned: &BTreeSet<TopicPartition>,
    replicas: usize,
    strategy: AssignmentStrategy,
) -> BTreeSet<TopicPartition> {
    let members = &view.members;
    if replicas == 0 || members.len() < 2 || !members.iter().any(|m| m == me) {
        return BTreeSet::new();
    }
    // Not what it owns, nor what the group still sees as its own (its assignment may not
    // have arrived yet after a restart).
    let others = |tp: &TopicPartition| {
        !owned.contains(tp) && view.owners.get(tp).map(String::as_str) != Some(me)
    };
    if members.len() <= replicas + 1 {
        return partitions.iter().filter(|tp| others(tp)).cloned().collect();
    }
    let now = assign(members, partitions, &view.owners, strategy);
    let mut keep = BTreeSet::new();
    for leaver in members.iter().filter(|m| *m != me) {
        let survivors: Vec<String> = members.iter().filter(|m| *m != leaver).cloned().collect();
        let after = assign(&survivors, partitions, &now, strategy);
        for (tp, heir) in &after {
            if now.get(tp) == Some(heir) {
                continue;
            }
            // The heir, then the members after it by name (the owner-to-be excluded).
            let start = survivors.iter().position(|m| m == heir).unwrap_or(0);
            let chain = (0..survivors.len()).map(|i| &survivors[(start + i) % survivors.len()]);
            if chain.take(replicas).any(|m| m == me) && others(tp) {
                keep.insert(tp.clone());
            }
        }
    }
    keep
}

/// The assignment `strategy` gives `members` (sorted); `previous` is what the sticky
/// assignor keeps.
fn assign(
    members: &[String],
    partitions: &[TopicPartition],
    previous: &BTreeMap<TopicPartition, String>,
    strategy: AssignmentStrategy,
) -> BTreeMap<TopicPartition, String> {
    let mut sorted: Vec<&TopicPartition> = partitions.iter().collect();
    sorted.sort();
    match strategy {
        AssignmentStrategy::RoundRobin => sorted
            .iter()
            .enumerate()
            .map(|(i, tp)| ((*tp).clone(), members[i % members.len()].clone()))
            .collect(),
        AssignmentStrategy::Range => {
            let mut by_topic: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
            for tp in sorted {
                by_topic.entry(tp.0.as_str()).or_default().push(tp);
            }
            let mut out = BTreeMap::new();
            for tps in by_topic.values() {
                let (per, extra) = (tps.len() / members.len(), tps.len() % members.len());
                let mut next = 0;
                for (i, member) in members.iter().enumerate() {
                    let count = per + usize::from(i < extra);
                    for tp in &tps[next..next + count] {
                        out.insert((*tp).clone(), member.clone());
                    }
                    next += count;
                }
            }
            out
        }
        _ => sticky(members, &sorted, previous),
    }
}

/// Partitions stay with their live owner; the rest go, in order, to the member owning
/// fewest (ties: by name). Then, while some member owns two more than another, the most
/// loaded gives its last partition to the least loaded.
fn sticky(
    members: &[String],
    sorted: &[&TopicPartition],
    previous: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let mut out = BTreeMap::new();
    let mut load: BTreeMap<&String, usize> = members.iter().map(|m| (m, 0)).collect();
    let mut free = Vec::new();
    for tp in sorted {
        match previous
            .get(*tp)
            .and_then(|o| members.iter().find(|m| *m == o))
        {
            Some(owner) => {
                out.insert((*tp).clone(), owner.clone());
                *load.get_mut(owner).expect("a member") += 1;
            }
            None => free.push(*tp),
        }
    }
    for tp in free {
        let (member, _) = least(&load);
        out.insert(tp.clone(), member.clone());
        *load.get_mut(member).expect("a member") += 1;
    }
    loop {
        // The most loaded: of equal loads, the one with the highest name.
        let (&most, &hi) = load.iter().max_by_key(|(_, n)| **n).expect("a member");
        let (least, lo) = least(&load);
        if hi < lo + 2 {
            break;
        }
        let moved = out
            .iter()
            .rev()
            .find(|(_, owner)| *owner == most)
            .map(|(tp, _)| tp.clone())
            .expect("the most loaded member owns a partition");
        out.insert(moved, least.clone());
        *load.get_mut(most).expect("a member") -= 1;
        *load.get_mut(least).expect("a member") += 1;
    }
    out
}

/// The least loaded member (loads are in name order: of equal loads, the lowest name).
fn least<'a>(load: &BTreeMap<&'a String, usize>) -> (&'a String, usize) {
    let (&member, &n) = load.iter().min_by_key(|(_, n)| **n).expect("a member");
    (member, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| ("in".to_string(), p)).collect()
    }

    fn view(members: &[&str], owners: &[(i32, &str)]) -> GroupView {
        GroupView {
            members: members.iter().map(|m| m.to_string()).collect(),
            owners: owners
                .iter()
                .map(|(p, m)| (("in".to_string(), *p), m.to_string()))
                .collect(),
        }
    }

    fn owned_by(view: &GroupView, me: &str) -> BTreeSet<TopicPartition> {
        view.owners
            .iter()
            .filter(|(_, o)| *o == me)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    fn set(ps: &[i32]) -> BTreeSet<TopicPartition> {
        ps.iter().map(|p| ("in".to_string(), *p)).collect()
    }

    #[test]
    fn a_small_group_keeps_every_partition_it_does_not_own() {
        let v = view(&["a", "b"], &[(0, "a"), (1, "b"), (2, "a"), (3, "b")]);
        let sticky = AssignmentStrategy::CooperativeSticky;
        let a = standby_set(&v, "a", &tps(4), &owned_by(&v, "a"), 1, sticky);
        assert_eq!(a, set(&[1, 3]));
        // Three members, two replicas: still "small".
        let v = view(&["a", "b", "c"], &[(0, "a"), (1, "b"), (2, "c")]);
        let c = standby_set(&v, "c", &tps(3), &owned_by(&v, "c"), 2, sticky);
        assert_eq!(c, set(&[0, 1]));
    }

    #[test]
    fn no_replicas_or_no_peers_keep_nothing() {
        let v = view(&["a"], &[(0, "a")]);
        let s = AssignmentStrategy::CooperativeSticky;
        assert!(standby_set(&v, "a", &tps(2), &BTreeSet::new(), 1, s).is_empty());
        let v = view(&["a", "b"], &[]);
        assert!(standby_set(&v, "a", &tps(2), &BTreeSet::new(), 0, s).is_empty());
        // A member not (yet) in the group's view predicts nothing.
        assert!(standby_set(&v, "z", &tps(2), &BTreeSet::new(), 1, s).is_empty());
    }

    #[test]
    fn sticky_heirs_are_the_least_loaded_survivors_and_each_partition_gets_one() {
        // 8 partitions over 3 members: a 0,3,6  b 1,4,7  c 2,5.
        let owners: Vec<(i32, &str)> = (0..8)
            .map(|p| (p, ["a", "b", "c"][p as usize % 3]))
            .collect();
        let v = view(&["a", "b", "c"], &owners);
        let s = AssignmentStrategy::CooperativeSticky;
        let sets: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|m| standby_set(&v, m, &tps(8), &owned_by(&v, m), 1, s))
            .collect();
        // a leaving: c (2) gets 0, then b and c tie at 3 → b gets 3, c gets 6.
        assert!(sets[2].contains(&("in".to_string(), 0)));
        assert!(sets[1].contains(&("in".to_string(), 3)));
        assert!(sets[2].contains(&("in".to_string(), 6)));
        // Every partition has exactly one predicted heir with one replica.
        for p in 0..8 {
            let holders = sets
                .iter()
                .filter(|s| s.contains(&("in".to_string(), p)))
                .count();
            assert_eq!(holders, 1, "partition {p}: {sets:?}");
        }
    }

    #[test]
    fn range_heirs_include_partitions_a_survivor_hands_over() {
        // Range over a, b, c: a 0-2, b 3-5, c 6-7. Without c: a 0-3, b 4-7 — a gains 3
        // from b, which stays. Without b: a 0-3, c 4-7. Without a: b 0-3, c 4-7.
        let v = view(&["a", "b", "c"], &[]);
        let r = AssignmentStrategy::Range;
        let a = standby_set(&v, "a", &tps(8), &set(&[0, 1, 2]), 1, r);
        assert_eq!(a, set(&[3]));
        let b = standby_set(&v, "b", &tps(8), &set(&[3, 4, 5]), 1, r);
        assert_eq!(b, set(&[0, 1, 2, 6, 7]));
        let c = standby_set(&v, "c", &tps(8), &set(&[6, 7]), 1, r);
        assert_eq!(c, set(&[4, 5]));
    }

    #[test]
    fn more_replicas_add_the_members_after_the_heir() {
        let members = ["a", "b", "c", "d"];
        let owners: Vec<(i32, &str)> = (0..4).map(|p| (p, members[p as usize])).collect();
        let v = view(&members, &owners);
        let rr = AssignmentStrategy::CooperativeSticky;
        let total: usize = members
            .iter()
            .map(|m| standby_set(&v, m, &tps(4), &owned_by(&v, m), 2, rr).len())
            .sum();
        assert_eq!(total, 8, "two replicas of each of 4 partitions");
    }
}
