//! One flush, apart from its I/O: which changelog records it writes, whether another writer
//! appended in between, and the RocksDB batch that makes it local. The worker's flush
//! (`PartitionState::flush`) and the crash simulation drive the same code.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::checkpoint::{SourcePosition, StoreCheckpoint};
use super::overlay::Entries;
use super::replay::{Entry, Stamp};

/// A flush of the entries of some stores.
#[derive(Debug)]
pub(crate) struct FlushPlan {
    pub(crate) stamp: Stamp,
    pub(crate) source: SourcePosition,
    /// Stores with entries, in store order.
    pub(crate) touched: Vec<usize>,
    pub(crate) entries: Arc<Vec<Entries>>,
}

/// Records of another writer between this owner's records in one store's changelog.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub(crate) store: usize,
    /// The range to read: from the offset this owner expected to the last one it got.
    pub(crate) from: i64,
    pub(crate) to: i64,
    /// This owner's offsets in the range (the rest are another writer's).
    pub(crate) ours: BTreeSet<i64>,
}

/// What the records of another writer in a gap mean for this owner.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GapVerdict {
    /// A newer owner took over: this one must stop, applying nothing.
    Fenced { newer_epoch: u64 },
    /// A previous owner's late records, void: their keys need their current values again.
    Repair(Vec<Vec<u8>>),
}

impl FlushPlan {
    /// `None` when nothing is to be flushed.
    pub(crate) fn new(
        entries: Arc<Vec<Entries>>,
        stamp: Stamp,
        source: SourcePosition,
    ) -> Option<Self> {
        let touched: Vec<usize> = (0..entries.len())
            .filter(|&i| !entries[i].is_empty())
            .collect();
        (!touched.is_empty()).then_some(Self {
            stamp,
            source,
            touched,
            entries,
        })
    }

    /// The data records, store by store; all of them are acknowledged before any marker is
    /// sent, so a marker in the log proves its store's data is there.
    pub(crate) fn data(&self) -> impl Iterator<Item = (usize, &[u8], Option<&[u8]>)> + '_ {
        self.touched.iter().flat_map(|&i| {
            self.entries[i]
                .iter()
                .map(move |(key, value)| (i, key.as_slice(), value.as_deref()))
        })
    }

    /// One flush marker per touched store, naming every touched store.
    pub(crate) fn markers(&self, store_names: &[String]) -> Vec<(usize, Entry)> {
        let touched: Vec<String> = self
            .touched
            .iter()
            .map(|&i| store_names[i].clone())
            .collect();
        self.touched
            .iter()
            .map(|&i| {
                (
                    i,
                    Entry::Flush {
                        source: self.source.clone(),
                        touched: touched.clone(),
                    },
                )
            })
            .collect()
    }

    /// Number of data records.
    pub(crate) fn records(&self) -> usize {
        self.touched.iter().map(|&i| self.entries[i].len()).sum()
    }

    /// Where this owner's records did not follow its previous ones. `data_offsets` and
    /// `marker_offsets` are the acknowledged offsets of [`data`](Self::data) and
    /// [`markers`](Self::markers), in order; `log_next` is, per store, the offset the
    /// owner's next record had to get.
    pub(crate) fn gaps(
        &self,
        data_offsets: &[i64],
        marker_offsets: &[i64],
        log_next: &[i64],
    ) -> Vec<Gap> {
        let mut data = data_offsets.iter();
        let mut gaps = Vec::new();
        for (&i, &marker) in self.touched.iter().zip(marker_offsets) {
            let mut ours: Vec<i64> = data.by_ref().take(self.entries[i].len()).copied().collect();
            ours.push(marker);
            let contiguous = ours
                .iter()
                .enumerate()
                .all(|(n, &offset)| offset == log_next[i] + n as i64);
            if !contiguous {
                gaps.push(Gap {
                    store: i,
                    from: log_next[i],
                    to: marker + 1,
                    ours: ours.into_iter().collect(),
                });
            }
        }
        gaps
    }

    /// Each touched store's checkpoint after its marker, for the RocksDB batch that also
    /// holds the entries. Updates `log_next` to follow the markers.
    pub(crate) fn checkpoints(
        &self,
        marker_offsets: &[i64],
        log_next: &mut [i64],
    ) -> Vec<(usize, StoreCheckpoint)> {
        self.touched
            .iter()
            .zip(marker_offsets)
            .map(|(&i, &marker)| {
                log_next[i] = marker + 1;
                (
                    i,
                    StoreCheckpoint::at(
                        marker + 1,
                        (self.stamp.epoch, self.stamp.seq),
                        &self.source,
                    ),
                )
            })
            .collect()
    }
}

/// Judges another writer's records found in a gap (offsets in `gap.ours` are skipped).
pub(crate) fn judge_gap(
    gap: &Gap,
    my_epoch: u64,
    records: impl IntoIterator<Item = (i64, Stamp, Entry)>,
) -> GapVerdict {
    let mut newest = 0;
    let mut keys = Vec::new();
    for (offset, stamp, entry) in records {
        if gap.ours.contains(&offset) {
            continue;
        }
        newest = newest.max(stamp.epoch);
        if let Entry::Data { key, .. } = entry {
            keys.push(key);
        }
    }
    if newest > my_epoch {
        GapVerdict::Fenced {
            newer_epoch: newest,
        }
    } else {
        GapVerdict::Repair(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(stores: &[&[(&str, Option<&str>)]]) -> Arc<Vec<Entries>> {
        Arc::new(
            stores
                .iter()
                .map(|kvs| {
                    kvs.iter()
                        .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                        .collect()
                })
                .collect(),
        )
    }

    const STAMP: Stamp = Stamp { epoch: 5, seq: 9 };
    const SOURCE: SourcePosition = SourcePosition {
        next: 100,
        last_timestamp: 7,
        stream_time: 7,
        done: crate::state::checkpoint::DoneSet::EMPTY,
    };

    #[test]
    fn records_of_one_flush_following_the_previous_ones_have_no_gap() {
        let plan = FlushPlan::new(
            entries(&[&[("a", Some("1")), ("b", None)], &[], &[("c", Some("3"))]]),
            STAMP,
            SOURCE,
        )
        .unwrap();
        assert_eq!(plan.touched, vec![0, 2]);
        assert_eq!(plan.records(), 3);
        assert_eq!(plan.data().count(), 3);
        let names = ["x".to_string(), "y".into(), "z".into()];
        let markers = plan.markers(&names);
        assert!(matches!(&markers[0].1, Entry::Flush { touched, .. } if touched == &["x", "z"]));
        let mut log_next = vec![10, 0, 40];
        assert!(plan.gaps(&[10, 11, 40], &[12, 41], &log_next).is_empty());
        let checkpoints = plan.checkpoints(&[12, 41], &mut log_next);
        assert_eq!(log_next, vec![13, 0, 42]);
        assert_eq!(checkpoints[1].1.changelog_next, 42);
        assert_eq!(checkpoints[1].1.source_next, 100);
    }

    #[test]
    fn another_writers_records_in_between_are_a_gap_and_judged_by_epoch() {
        let plan = FlushPlan::new(entries(&[&[("a", Some("1"))]]), STAMP, SOURCE).unwrap();
        // Someone wrote at offsets 10 and 11.
        let gaps = plan.gaps(&[12], &[13], &[10]);
        assert_eq!(
            gaps,
            vec![Gap {
                store: 0,
                from: 10,
                to: 14,
                ours: BTreeSet::from([12, 13])
            }]
        );
        let data = |key: &str| Entry::Data {
            key: key.as_bytes().to_vec(),
            value: None,
        };
        let older = Stamp { epoch: 4, seq: 8 };
        let verdict = judge_gap(
            &gaps[0],
            5,
            [(10, older, data("z")), (12, STAMP, data("a"))],
        );
        assert_eq!(verdict, GapVerdict::Repair(vec![b"z".to_vec()]));
        let newer = Stamp { epoch: 6, seq: 0 };
        let verdict = judge_gap(
            &gaps[0],
            5,
            [(
                10,
                newer,
                Entry::Epoch {
                    source: SourcePosition::NONE,
                },
            )],
        );
        assert_eq!(verdict, GapVerdict::Fenced { newer_epoch: 6 });
    }
}
