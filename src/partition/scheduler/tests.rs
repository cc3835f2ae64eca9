use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

fn batch(records: &[(i64, Option<&str>)]) -> Arc<RecordBatch> {
    let mut b = RecordBatch::default();
    for (offset, key) in records {
        b.push_raw(*offset, key.map(str::as_bytes), Some(b"v"), &[]);
    }
    Arc::new(b)
}

fn push_all(s: &mut KeyScheduler, b: &Arc<RecordBatch>) {
    for index in 0..b.records.len() {
        let pending = Pending {
            batch: b.clone(),
            index,
        };
        s.push(pending, &SourcePosition::NONE);
    }
}

fn key(k: &str) -> Key {
    key_of(Some(k.as_bytes()))
}

#[test]
fn one_key_runs_one_record_at_a_time_and_other_keys_pass_it() {
    let mut s = KeyScheduler::new(4, 100, SourcePosition::NONE);
    push_all(
        &mut s,
        &batch(&[
            (0, Some("hot")),
            (1, Some("hot")),
            (2, Some("a")),
            (3, None),
            (4, None),
        ]),
    );
    let started: Vec<i64> = std::iter::from_fn(|| s.next().map(|(_, p)| p.offset())).collect();
    assert_eq!(
        started,
        vec![0, 2, 3],
        "hot@1 and the second unkeyed record wait"
    );
    assert_eq!((s.running(), s.waiting()), (3, 2));
    s.finish(key("hot"), 0, -1);
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(1));
    s.finish(key_of(None), 3, -1);
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(4));
}

#[test]
fn the_limit_and_the_lookahead_bound_what_starts() {
    let mut s = KeyScheduler::new(2, 3, SourcePosition::NONE);
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let records: Vec<(i64, Option<&str>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as i64, Some(k.as_str())))
        .collect();
    push_all(&mut s, &batch(&records));
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(0));
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(1));
    assert!(s.next().is_none(), "limit 2");
    s.finish(key("k1"), 1, -1);
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(2));
    s.finish(key("k2"), 2, -1);
    assert!(
        s.next().is_none(),
        "offset 3 is 3 past the stuck offset 0: the lookahead"
    );
    s.finish(key("k0"), 0, -1);
    assert_eq!(s.next().map(|(_, p)| p.offset()), Some(3));
}

#[test]
fn committable_is_the_lowest_unfinished_offset_with_the_finished_ones_after_it() {
    let mut s = KeyScheduler::new(8, 100, SourcePosition::NONE);
    // Offsets with gaps (compaction): 10, 11, 13, 14, 20.
    push_all(
        &mut s,
        &batch(&[
            (10, Some("a")),
            (11, Some("b")),
            (13, Some("c")),
            (14, Some("d")),
            (20, Some("e")),
        ]),
    );
    assert!(s.completion.committable().is_none(), "nothing finished yet");
    while s.next().is_some() {}
    for (k, o) in [("b", 11), ("d", 14), ("e", 20)] {
        s.finish(key(k), o, -1);
    }
    let p = s.completion.committable().unwrap();
    assert_eq!(p.next, 10);
    assert_eq!(p.done.ranges(), &[(11, 12), (14, 21)]);
    s.finish(key("a"), 10, -1);
    let p = s.completion.committable().unwrap();
    assert_eq!((p.next, p.done.ranges()), (13, &[(14, 21)][..]));
    s.finish(key("c"), 13, -1);
    let p = s.completion.committable().unwrap();
    assert_eq!((p.next, p.done.is_empty()), (21, true));
}

#[test]
fn records_the_restored_state_reflects_finish_without_starting() {
    let restored = SourcePosition {
        next: 2,
        last_timestamp: -1,
        stream_time: -1,
        done: DoneSet::from_ranges(vec![(3, 4)]),
    };
    let mut s = KeyScheduler::new(4, 100, restored.clone());
    let b = batch(&[(2, Some("a")), (3, Some("b")), (4, Some("c"))]);
    let started: Vec<bool> = (0..3)
        .map(|index| {
            s.push(
                Pending {
                    batch: b.clone(),
                    index,
                },
                &restored,
            )
        })
        .collect();
    assert_eq!(started, vec![true, false, true]);
    let ran: Vec<i64> = std::iter::from_fn(|| s.next().map(|(_, p)| p.offset())).collect();
    assert_eq!(ran, vec![2, 4]);
}

proptest! {
    /// Random keys, random completion order: one key never runs twice at once and runs in
    /// offset order; the limit and the lookahead hold; everything eventually runs; the
    /// committable position is always the lowest unfinished offset plus exactly the
    /// finished records after it.
    #[test]
    fn same_key_order_limits_and_commit_positions_hold_under_any_completion_order(
        keys in proptest::collection::vec(0u8..6, 1..120),
        limit in 1usize..8,
        lookahead in 1usize..40,
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 200),
        chunk in 1usize..30,
    ) {
        let records: Vec<(i64, Option<String>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as i64 * 2, (*k != 0).then(|| format!("k{k}"))))
            .collect();
        let mut s = KeyScheduler::new(limit, lookahead, SourcePosition::NONE);
        let mut running: Vec<(Key, i64)> = Vec::new();
        let mut last_started: HashMap<Key, i64> = HashMap::new();
        let mut finished: BTreeSet<i64> = BTreeSet::new();
        let mut fed = 0;
        let mut picks = picks.into_iter().cycle();
        while finished.len() < records.len() {
            // Feed in chunks, as batches arrive.
            if fed < records.len() && s.waiting() < 2 * lookahead {
                let end = (fed + chunk).min(records.len());
                let refs: Vec<(i64, Option<&str>)> =
                    records[fed..end].iter().map(|(o, k)| (*o, k.as_deref())).collect();
                push_all(&mut s, &batch(&refs));
                fed = end;
            }
            while let Some((key, p)) = s.next() {
                let offset = p.offset();
                prop_assert!(!running.iter().any(|(k, _)| *k == key), "key running twice");
                if let Some(prev) = last_started.insert(key, offset) {
                    prop_assert!(prev < offset, "key out of offset order");
                }
                let low = (0..records.len() as i64 * 2).step_by(2).find(|o| !finished.contains(o));
                prop_assert!(offset - low.unwrap() < lookahead as i64, "past the lookahead");
                running.push((key, offset));
                prop_assert!(running.len() <= limit);
            }
            if running.is_empty() {
                prop_assert!(fed < records.len(), "stalled with nothing running");
                continue;
            }
            let i = picks.next().unwrap().index(running.len());
            let (key, offset) = running.swap_remove(i);
            s.finish(key, offset, -1);
            finished.insert(offset);
            let p = s.completion.committable().unwrap();
            let low = (0..records.len() as i64 * 2)
                .step_by(2)
                .find(|o| !finished.contains(o) && (*o as usize / 2) < fed);
            match low {
                Some(low) => {
                    prop_assert_eq!(p.next, low);
                    for o in finished.range(low..) {
                        prop_assert!(p.done.contains(*o), "finished {} not in the done set", o);
                    }
                    for o in (low..fed as i64 * 2).step_by(2).filter(|o| !finished.contains(o)) {
                        prop_assert!(!p.done.contains(o), "unfinished {} in the done set", o);
                    }
                }
                None => prop_assert!(p.done.is_empty()),
            }
        }
    }
}
