//! Crash and zombie simulation of the state layer, deterministic and without a broker.
//!
//! Owners restore from an in-memory changelog with the real [`restore`] into a real RocksDB,
//! count source records into two stores (`count` and `sum` of offsets, so every flush
//! touches both), and flush with the real [`FlushPlan`]. Any append can be the last before a
//! crash (SIGKILL: what was appended stays, the rest never happens); a replaced owner can
//! live on as a zombie and flush after its successor took over; a process can come back to
//! its old local state, or lose its disk. After every open, the state must hold every
//! source record before the restored offset exactly once — and so must a full replay of the
//! log, and a replay of the log as compaction would leave it.
//!
//! A third process keeps a standby replica ([`Replica`]) that catches up at random moments
//! (with flushes cut short, zombies and early releases that a later owner voids) and must
//! hold every source record before each store's checkpoint exactly once after every pass;
//! now and then it is promoted: the next owner opens its directory.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::checkpoint::SourcePosition;
use super::db::PartitionDb;
use super::flush::{judge_gap, FlushPlan, GapVerdict};
use super::overlay::Entries;
use super::replay::{Entry, Stamp};
use super::replica::Replica;
use super::restore::{restore, ChangelogPartition};
use super::{StateError, StoreSpec};

const KEYS: u64 = 6;

type Log = Rc<RefCell<Vec<Vec<(Stamp, Entry)>>>>;

/// The changelogs of the partition; appends fail once `budget` runs out (the crash).
struct SimLog {
    log: Log,
    budget: Rc<Cell<usize>>,
}

fn crash() -> StateError {
    StateError::CorruptMetadata {
        path: PathBuf::from("sim"),
        reason: "crashed".into(),
    }
}

impl ChangelogPartition for SimLog {
    fn watermarks(&mut self, store: usize) -> Result<(i64, i64), StateError> {
        Ok((0, self.log.borrow()[store].len() as i64))
    }

    fn read(
        &mut self,
        store: usize,
        from: i64,
        to: i64,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError> {
        let records: Vec<_> = self.log.borrow()[store]
            .iter()
            .enumerate()
            .skip(from.max(0) as usize)
            .take((to - from).max(0) as usize)
            .map(|(o, (s, e))| (o as i64, *s, e.clone()))
            .collect();
        for (offset, stamp, entry) in records {
            apply(offset, stamp, entry)?;
        }
        Ok(true)
    }

    fn append(&mut self, records: Vec<(usize, Stamp, Entry)>) -> Result<Vec<i64>, StateError> {
        let mut offsets = Vec::new();
        for (store, stamp, entry) in records {
            if self.budget.get() == 0 {
                return Err(crash());
            }
            self.budget.set(self.budget.get() - 1);
            let mut log = self.log.borrow_mut();
            log[store].push((stamp, entry));
            offsets.push(log[store].len() as i64 - 1);
        }
        Ok(offsets)
    }
}

fn specs() -> Vec<StoreSpec> {
    ["count", "sum"]
        .iter()
        .map(|n| StoreSpec {
            name: n.to_string(),
            format: "sim".into(),
            expiry: None,
        })
        .collect()
}

fn key_of(offset: u64) -> Vec<u8> {
    vec![b'k', (offset * 7 % KEYS) as u8]
}

fn number(bytes: Option<Vec<u8>>) -> u64 {
    bytes.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
}

struct Owner {
    db: PartitionDb,
    log: SimLog,
    epoch: u64,
    next_seq: u64,
    log_next: Vec<i64>,
    /// Next source offset processed (ahead of the flushed one until a flush).
    next: u64,
    overlay: Vec<Entries>,
}

enum Flushed {
    Done,
    Fenced,
}

impl Owner {
    /// Opens like a worker: restore, then take ownership. `Err`: crashed meanwhile.
    fn open(dir: &std::path::Path, log: SimLog) -> Result<Self, StateError> {
        let mut log = log;
        let db = PartitionDb::open(dir, &specs(), Duration::ZERO, &Default::default())?;
        let restored = match restore(&db, &mut log, &specs(), &mut |_, _| {}) {
            Err(
                StateError::CheckpointAhead { .. }
                | StateError::ChangelogReplaced { .. }
                | StateError::Damaged { .. },
            ) => {
                db.destroy()?;
                let db = PartitionDb::open(dir, &specs(), Duration::ZERO, &Default::default())?;
                let r = restore(&db, &mut log, &specs(), &mut |_, _| {})?.unwrap();
                return Ok(Self::new(db, log, r));
            }
            other => other?.unwrap(),
        };
        Ok(Self::new(db, log, restored))
    }

    fn new(db: PartitionDb, log: SimLog, r: super::restore::Restored) -> Self {
        Self {
            db,
            log,
            epoch: r.epoch,
            next_seq: r.next_seq,
            log_next: r.log_next,
            next: r.source.next.max(0) as u64,
            overlay: vec![Entries::default(), Entries::default()],
        }
    }

    fn read(&self, store: usize, key: &[u8]) -> u64 {
        match self.overlay[store].get(key) {
            Some(value) => number(value.clone()),
            None => number(self.db.get(store, key).unwrap()),
        }
    }

    fn process(&mut self, records: u64) {
        for _ in 0..records {
            let key = key_of(self.next);
            let count = self.read(0, &key) + 1;
            let sum = self.read(1, &key) + self.next;
            self.overlay[0].insert(key.clone(), Some(count.to_be_bytes().to_vec()));
            self.overlay[1].insert(key, Some(sum.to_be_bytes().to_vec()));
            self.next += 1;
        }
    }

    fn flush(&mut self) -> Result<Flushed, StateError> {
        let stamp = Stamp {
            epoch: self.epoch,
            seq: self.next_seq,
        };
        let source = SourcePosition {
            next: self.next as i64,
            last_timestamp: self.next as i64 - 1,
            stream_time: self.next as i64 - 1,
            done: super::checkpoint::DoneSet::EMPTY,
        };
        let entries = std::mem::replace(
            &mut self.overlay,
            vec![Entries::default(), Entries::default()],
        );
        let Some(plan) = FlushPlan::new(std::sync::Arc::new(entries), stamp, source) else {
            return Ok(Flushed::Done);
        };
        let with_stamp =
            |r: Vec<(usize, Entry)>| r.into_iter().map(|(i, e)| (i, stamp, e)).collect();
        let data: Vec<(usize, Entry)> = plan
            .data()
            .map(|(i, key, value)| {
                (
                    i,
                    Entry::Data {
                        key: key.to_vec(),
                        value: value.map(<[u8]>::to_vec),
                    },
                )
            })
            .collect();
        let data = self.log.append(with_stamp(data))?;
        let names = ["count".to_string(), "sum".to_string()];
        let markers = self.log.append(with_stamp(plan.markers(&names)))?;
        let mut repair = Vec::new();
        for gap in plan.gaps(&data, &markers, &self.log_next) {
            let mut records = Vec::new();
            self.log.read(gap.store, gap.from, gap.to, &mut |o, s, e| {
                records.push((o, s, e));
                Ok(())
            })?;
            match judge_gap(&gap, self.epoch, records) {
                GapVerdict::Fenced { .. } => return Ok(Flushed::Fenced),
                GapVerdict::Repair(keys) => repair.extend(keys.into_iter().map(|k| (gap.store, k))),
            }
        }
        let checkpoints = plan.checkpoints(&markers, &mut self.log_next);
        self.db.write_flush(&plan.entries, checkpoints)?;
        self.next_seq += 1;
        for (store, key) in repair {
            let value = self.db.get(store, &key)?;
            self.overlay[store].insert(key, value);
        }
        Ok(Flushed::Done)
    }

    /// The state equals the source records before the restored offset, each counted once.
    fn check(&self, context: &str) {
        check_store(&self.db, 0, self.next, context);
        check_store(&self.db, 1, self.next, context);
    }
}

/// Store `store` (0: count, 1: sum of offsets) of `db` holds each source record before
/// `next` exactly once.
fn check_store(db: &PartitionDb, store: usize, next: u64, context: &str) {
    let mut expected = HashMap::new();
    for offset in 0..next {
        *expected.entry(key_of(offset)).or_insert(0u64) += if store == 0 { 1 } else { offset };
    }
    for k in 0..KEYS {
        let key = vec![b'k', k as u8];
        assert_eq!(
            number(db.get(store, &key).unwrap()),
            expected.get(&key).copied().unwrap_or(0),
            "{context}: store {store}, key {k} at source offset {next}"
        );
    }
}

/// One pass of the standby replica in `dir` (opened if needed); checks what it holds.
/// A replica that must be rebuilt is wiped (the next pass starts over).
fn standby_pass(standby: &mut Option<Replica>, dir: &std::path::Path, log: &Log, context: &str) {
    let replica = match standby.take() {
        Some(replica) => replica,
        None => {
            let db = PartitionDb::open(dir, &specs(), Duration::ZERO, &Default::default()).unwrap();
            Replica::new(db, &specs()).unwrap()
        }
    };
    let mut replica = replica;
    let mut sim_log = SimLog {
        log: log.clone(),
        budget: Rc::new(Cell::new(usize::MAX)),
    };
    match replica.catch_up(&mut sim_log) {
        Ok(pass) => {
            assert!(pass.is_some(), "{context}: nothing stops a simulated read");
            for store in 0..2 {
                let next = replica.db().checkpoint(store).unwrap().source_next.max(0) as u64;
                check_store(replica.db(), store, next, &format!("{context}: standby"));
            }
            *standby = Some(replica);
        }
        Err(
            StateError::Damaged { .. }
            | StateError::CheckpointAhead { .. }
            | StateError::ChangelogReplaced { .. },
        ) => replica.destroy().unwrap(),
        Err(error) => panic!("{context}: standby pass failed: {error}"),
    }
}

/// xorshift64*: reproducible randomness from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The log as compaction could leave it: only the latest record of each key per store
/// (markers of one kind share a key), in log order.
fn compacted(log: &Log) -> Log {
    let stores = log
        .borrow()
        .iter()
        .map(|records| {
            let key = |e: &Entry| match e {
                Entry::Data { key, .. } => key.clone(),
                Entry::Flush { .. } => b"\0flush".to_vec(),
                Entry::Epoch { .. } => b"\0epoch".to_vec(),
            };
            let mut last = HashMap::new();
            for (i, (_, e)) in records.iter().enumerate() {
                last.insert(key(e), i);
            }
            records
                .iter()
                .enumerate()
                .filter(|(i, (_, e))| last[&key(e)] == *i)
                .map(|(_, r)| r.clone())
                .collect()
        })
        .collect();
    Rc::new(RefCell::new(stores))
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    // Process 2 keeps the standby replica while it owns nothing.
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let log: Log = Rc::new(RefCell::new(vec![Vec::new(), Vec::new()]));
    let mut live: Option<(usize, Owner)> = None;
    let mut standby: Option<Replica> = None;
    for step in 0..steps {
        let context = format!("seed {seed} step {step}");
        let zombie = match live.take() {
            Some((process, owner)) if rng.chance(30) => Some((process, owner)),
            _ => None, // closed, or crashed: its database is dropped as it was
        };
        let standby_free = zombie.as_ref().is_none_or(|(p, _)| *p != 2);
        if standby_free && rng.chance(60) {
            standby_pass(&mut standby, dirs[2].path(), &log, &context);
        }
        // A zombie holds its directory: the successor runs in another process; the standby's
        // process now and then (a promotion).
        let process = loop {
            let p = if standby_free && rng.chance(25) {
                2
            } else {
                rng.below(2) as usize
            };
            if zombie.as_ref().is_none_or(|(z, _)| *z != p) {
                break p;
            }
        };
        if process == 2 {
            if let Some(replica) = standby.take() {
                replica.close().unwrap();
            }
        }
        if rng.chance(15) {
            let _ = std::fs::remove_dir_all(dirs[process].path()); // lost disk
        }
        let budget = Rc::new(Cell::new(if rng.chance(15) {
            rng.below(3) as usize
        } else {
            usize::MAX
        }));
        let sim_log = SimLog {
            log: log.clone(),
            budget: budget.clone(),
        };
        let mut owner = match Owner::open(dirs[process].path(), sim_log) {
            Ok(owner) => owner,
            Err(_) => continue, // crashed while taking over
        };
        if std::env::var("KS_SIM_DEBUG").is_ok() {
            eprintln!(
                "{context}: opened in process {process}, zombie: {}\n{}",
                zombie.is_some(),
                dump(&log)
            );
        }
        owner.check(&format!("{context}: after open"));
        if let Some((_, mut z)) = zombie {
            // The zombie wakes up and flushes what it processed meanwhile.
            z.process(1 + rng.below(5));
            z.log.budget.set(if rng.chance(30) {
                rng.below(4) as usize
            } else {
                usize::MAX
            });
            if let Ok(Flushed::Done) = z.flush() {
                panic!("{context}: a zombie flushed after its successor took over");
            }
        }
        let mut crashed = false;
        for _ in 0..1 + rng.below(4) {
            owner.process(1 + rng.below(8));
            budget.set(if rng.chance(20) {
                rng.below(12) as usize
            } else {
                usize::MAX
            });
            match owner.flush() {
                Ok(Flushed::Done) => {}
                Ok(Flushed::Fenced) => panic!("{context}: the live owner was fenced"),
                Err(_) => {
                    crashed = true;
                    break;
                }
            }
        }
        if !crashed {
            budget.set(usize::MAX);
            live = Some((process, owner));
        }
    }
    drop(live);
    // A full replay by a new owner, which also repairs what the last zombie left; then a
    // replay of the log as compaction may leave it once repairs are written.
    let replay = |log: Log, name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let sim_log = SimLog {
            log,
            budget: Rc::new(Cell::new(usize::MAX)),
        };
        let owner = Owner::open(dir.path(), sim_log).unwrap();
        owner.check(&format!("seed {seed}: {name}"));
    };
    replay(log.clone(), "full replay");
    replay(compacted(&log), "compacted replay");
}

fn dump(log: &Log) -> String {
    let mut out = String::new();
    for (i, records) in log.borrow().iter().enumerate() {
        out += &format!("store {i}:\n");
        for (o, (s, e)) in records.iter().enumerate() {
            let what = match e {
                Entry::Data { key, value } => format!(
                    "data k{} {:?}",
                    key[1],
                    value.clone().map(|v| number(Some(v)))
                ),
                Entry::Flush { source, touched } => {
                    format!("FLUSH src {} {:?}", source.next, touched)
                }
                Entry::Epoch { source } => format!("EPOCH src {}", source.next),
            };
            out += &format!("  {o:3} e{} s{} {what}\n", s.epoch, s.seq);
        }
    }
    out
}

#[test]
fn one_seed() {
    let Some(seed) = std::env::var("KS_SIM_ONE")
        .ok()
        .and_then(|v| v.parse().ok())
    else {
        return;
    };
    run(seed, 25);
}

#[test]
fn crashes_zombies_and_moves_never_lose_or_double_apply_a_record() {
    let rounds: u64 = std::env::var("KS_SIM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let base = std::env::var("KS_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    for round in 0..rounds {
        run(
            base.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            25,
        );
    }
}
