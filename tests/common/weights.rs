//! The co-partitioned table of the crash, chaos and zombie workloads: a weight per key,
//! which [`CountSum`](super::CountSum) reads for every record (a missing weight fails the
//! record, and under `ErrorPolicy::Fail` the consumer), so those tests also prove that a
//! table is complete before its partition's first record, across crashes, moves and
//! zombies, and that it ends equal to its topic. The table is versioned, and the handler
//! also reads it as of each record's time, so version writes, heads and their restores run
//! under the same SIGKILLs.
#![allow(dead_code, unreachable_pub)]

use super::*;
use kafka_stateful::table::TableDef;

pub fn weights_topic(topic: &str) -> String {
    format!("{topic}-weights")
}

pub fn weights_table(topic: &str) -> TableDef<String, String> {
    TableDef::new("weights", &weights_topic(topic), Utf8, Utf8)
        .versioned(std::time::Duration::from_secs(3_600))
}

/// The input topic and its weights topic, both with `partitions` partitions.
pub async fn create_workload_topics(topic: &str, partitions: i32) {
    create_topic(topic, partitions).await;
    create_topic(&weights_topic(topic), partitions).await;
}

/// The weights produced, per key (`key-<k>` in partition `k % partitions`, as the
/// [`Workload`](super::Workload)'s records).
pub struct Weights {
    partitions: i32,
    keys: usize,
    next: u64,
    rng: Rng,
    /// The latest weight of each key.
    pub latest: HashMap<String, u64>,
    /// Weight records produced.
    pub produced: u64,
}

impl Weights {
    pub fn new(partitions: i32, keys: usize, seed: u64) -> Self {
        Self {
            partitions,
            keys,
            next: 1,
            rng: Rng::from_seed(seed ^ 0x3E16),
            latest: HashMap::new(),
            produced: 0,
        }
    }

    fn record(&mut self, k: usize) -> (i32, String, String) {
        let (key, weight) = (format!("key-{k}"), self.next);
        self.next += 1;
        self.produced += 1;
        self.latest.insert(key.clone(), weight);
        (
            (k % self.partitions as usize) as i32,
            key,
            weight.to_string(),
        )
    }

    /// `versions` weights for every key, the last one being its latest: a table whose
    /// bootstrap reads `versions × keys` records.
    pub fn all(&mut self, versions: usize) -> Vec<(i32, String, String)> {
        let keys = self.keys;
        (0..versions)
            .flat_map(|_| 0..keys)
            .map(|k| self.record(k))
            .collect()
    }

    /// A new weight for each of `count` random keys.
    pub fn updates(&mut self, count: usize) -> Vec<(i32, String, String)> {
        (0..count)
            .map(|_| {
                let k = self.rng.below(self.keys as u64) as usize;
                self.record(k)
            })
            .collect()
    }

    /// One line per key whose weight, as the last record of the key saw it, is not the
    /// latest produced (empty when the table equals its topic).
    pub fn mismatches(&self, seen: &HashMap<String, u64>) -> Vec<String> {
        let mut out: Vec<String> = self
            .latest
            .iter()
            .filter(|(k, w)| seen.get(*k) != Some(w))
            .map(|(k, w)| format!("{k}: weight {:?}, want {w}", seen.get(k)))
            .collect();
        out.sort();
        out
    }
}
