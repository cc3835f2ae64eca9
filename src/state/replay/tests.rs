use super::*;
use crate::state::checkpoint::DoneSet;

const NO_SOURCE: SourcePosition = SourcePosition::NONE;

fn stamp(epoch: u64, seq: u64) -> Stamp {
    Stamp { epoch, seq }
}

fn data(key: &str, value: u8) -> Entry {
    Entry::Data {
        key: key.as_bytes().to_vec(),
        value: Some(vec![value]),
    }
}

fn flush(next: i64, touched: &[&str]) -> Entry {
    Entry::Flush {
        source: SourcePosition {
            next,
            last_timestamp: next,
            stream_time: next,
            done: DoneSet::EMPTY,
        },
        touched: touched.iter().map(|s| s.to_string()).collect(),
    }
}

fn epoch_marker() -> Entry {
    Entry::Epoch { source: NO_SOURCE }
}

fn feed(store: &mut StoreReplay, records: Vec<(Stamp, Entry)>) {
    for (offset, (s, e)) in records.into_iter().enumerate() {
        store.push(offset as i64, s, e);
    }
}

fn applied(outcome: &StoreOutcome) -> Vec<String> {
    outcome
        .apply
        .iter()
        .flat_map(|(d, _)| d)
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                v.as_ref().map_or(0, |v| v[0])
            )
        })
        .collect()
}

/// Issue 9, case 6: flush 2 touched a and b and only a got its marker; the next owner
/// crashed after writing its epoch marker to b only. Flush 2 must not reach a.
#[test]
fn a_flush_missing_a_marker_stays_rolled_back_when_the_next_owner_crashes_midway() {
    let (mut a, mut b) = (
        StoreReplay::new("a", StoreCheckpoint::EMPTY),
        StoreReplay::new("b", StoreCheckpoint::EMPTY),
    );
    feed(
        &mut a,
        vec![
            (stamp(1, 1), data("a1", 1)),
            (stamp(1, 1), flush(5, &["a", "b"])),
            (stamp(1, 2), data("a2", 2)),
            (stamp(1, 2), flush(9, &["a", "b"])),
        ],
    );
    feed(
        &mut b,
        vec![
            (stamp(1, 1), data("b1", 1)),
            (stamp(1, 1), flush(5, &["a", "b"])),
            (stamp(1, 2), data("b2", 2)),
            (stamp(7, 1), epoch_marker()),
        ],
    );
    let plan = plan(&[clone_of(&a), clone_of(&b)]);
    assert_eq!(plan.last_complete_seq, 1);
    let mut stores = [a, b];
    let r = resolve(&mut stores);
    assert_eq!(applied(&r.stores[0]), ["a1=1"]);
    assert_eq!(applied(&r.stores[1]), ["b1=1"]);
    assert!(r.stores[0].repair.contains(b"a2".as_slice()));
    assert!(r.stores[1].repair.contains(b"b2".as_slice()));
    assert_eq!(r.source.next, 5);
    assert_eq!(r.max_epoch, 7);
    assert_eq!(r.next_seq, 3);
}

/// A zombie (epoch 1) finishes a flush after its successor's epoch marker (epoch 2).
#[test]
fn a_zombies_records_after_a_newer_epoch_marker_are_void() {
    let mut a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
    feed(
        &mut a,
        vec![
            (stamp(1, 1), data("k", 1)),
            (stamp(1, 1), flush(3, &["a"])),
            (stamp(1, 2), data("k", 2)), // the zombie's flush 2 starts...
            (stamp(2, 1), epoch_marker()), // ...its successor takes over (base 1)...
            (stamp(1, 2), flush(6, &["a"])), // ...and the zombie's marker lands late.
            (stamp(2, 3), data("j", 9)),
            (stamp(2, 3), flush(4, &["a"])),
        ],
    );
    let mut stores = [a];
    let r = resolve(&mut stores);
    assert_eq!(applied(&r.stores[0]), ["k=1", "j=9"]);
    assert_eq!(r.stores[0].repair, BTreeSet::from([b"k".to_vec()]));
    assert_eq!(
        r.source.next, 4,
        "the void flush's source position does not count"
    );
    assert_eq!(r.stores[0].apply.as_ref().unwrap().1.epoch, 2);
}

/// A flush marker confirms in its own store only; the flush applies when every store it
/// touched has its marker, and a later marker proves the previous flush complete.
#[test]
fn flushes_complete_in_every_touched_store_apply_and_the_tail_is_void() {
    let (mut a, mut b) = (
        StoreReplay::new("a", StoreCheckpoint::EMPTY),
        StoreReplay::new("b", StoreCheckpoint::EMPTY),
    );
    feed(
        &mut a,
        vec![
            (stamp(1, 1), data("x", 1)),
            (stamp(1, 1), flush(10, &["a", "b"])),
            (stamp(1, 2), data("y", 2)),
            (stamp(1, 2), flush(20, &["a"])),
            (stamp(1, 3), data("z", 3)), // crash before the marker
        ],
    );
    feed(
        &mut b,
        vec![
            (stamp(1, 1), data("w", 1)),
            (stamp(1, 1), flush(10, &["a", "b"])),
        ],
    );
    let mut stores = [a, b];
    let r = resolve(&mut stores);
    assert_eq!(applied(&r.stores[0]), ["x=1", "y=2"]);
    assert_eq!(applied(&r.stores[1]), ["w=1"]);
    assert_eq!(r.stores[0].repair, BTreeSet::from([b"z".to_vec()]));
    assert_eq!(r.source.next, 20);
    assert_eq!(r.last_complete_seq, 2);
}

fn clone_of(s: &StoreReplay) -> StoreReplay {
    StoreReplay {
        name: s.name.clone(),
        checkpoint: s.checkpoint.clone(),
        epoch: s.epoch,
        tail: s.tail.clone(),
        held: s.held.as_ref().map(|h| Held {
            stamp: h.stamp,
            source: h.source.clone(),
            touched: h.touched.clone(),
            changelog_next: h.changelog_next,
            data: h.data.clone(),
        }),
        ready: s.ready.clone(),
        ready_checkpoint: s.ready_checkpoint.clone(),
        marked_seq: s.marked_seq,
        max_seq: s.max_seq,
        max_epoch: s.max_epoch,
        source: s.source.clone(),
        void_keys: s.void_keys.clone(),
        voided: s.voided,
        unsettled: s.unsettled,
        contradicted: s.contradicted,
        ready_bytes: s.ready_bytes,
    }
}

#[test]
fn an_early_release_is_settled_by_a_later_flush_and_contradicted_by_an_epoch_that_voids_it() {
    let early = |records: Vec<(Stamp, Entry)>| {
        let mut a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        feed(
            &mut a,
            vec![
                (stamp(1, 1), data("x", 1)),
                (stamp(1, 1), flush(10, &["a"])),
            ],
        );
        let mut stores = [a];
        release_complete(&mut stores);
        let [mut a] = stores;
        let (data, checkpoint) = a.take_ready().expect("released early");
        assert_eq!(data.len(), 1);
        assert!(checkpoint.unsettled);
        for (i, (s, e)) in records.into_iter().enumerate() {
            a.push(10 + i as i64, s, e);
        }
        a.contradicted()
    };
    // The owner's next flush settles it.
    assert!(!early(vec![
        (stamp(1, 2), data("y", 2)),
        (stamp(1, 2), flush(20, &["a"]))
    ]));
    // A new owner that found it complete (base 1) agrees.
    assert!(!early(vec![(stamp(2, 1), epoch_marker())]));
    // A new owner that did not (base 0) voids it: the early release is contradicted.
    assert!(early(vec![(stamp(2, 0), epoch_marker())]));
    // A later flush settles it for good: an epoch after that cannot contradict it.
    assert!(!early(vec![
        (stamp(1, 2), flush(20, &["a"])),
        (stamp(2, 0), epoch_marker()),
    ]));
}

#[test]
fn an_incomplete_flush_is_not_released_early() {
    let mut a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
    let b = StoreReplay::new("b", StoreCheckpoint::EMPTY);
    feed(
        &mut a,
        vec![
            (stamp(1, 1), data("x", 1)),
            (stamp(1, 1), flush(10, &["a", "b"])),
        ],
    );
    let mut stores = [a, b];
    release_complete(&mut stores);
    assert!(
        stores[0].take_ready().is_none(),
        "b has no marker of flush 1 yet"
    );
}

#[test]
fn a_checkpoint_of_an_early_release_carries_it_into_the_next_replay() {
    let checkpoint = StoreCheckpoint {
        unsettled: true,
        ..StoreCheckpoint::at(10, (1, 1), &NO_SOURCE)
    };
    let mut a = StoreReplay::new("a", checkpoint);
    a.push(10, stamp(2, 0), epoch_marker());
    assert!(a.contradicted());
}
