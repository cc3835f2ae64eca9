//! Time to live for key-value stores: entries not written within a TTL disappear.
//!
//! A store declared with [`StoreDef::with_ttl`](crate::StoreDef::with_ttl) keeps, in front of
//! each value, the time it was written (8 bytes, big-endian milliseconds) on its clock:
//! the partition's stream time, or the wall clock. Reads treat an entry written at `w` as
//! absent once `now >= w + ttl`, so expiry is exact for the handler. A sweep, a library
//! timer on the same clock, deletes expired entries — in RocksDB and with changelog
//! tombstones, so a restore does not bring them back — and schedules the next sweep.
//!
//! Cost: 8 bytes per entry; a sweep reads the whole store (O(entries), holding only the
//! expired keys in memory) and runs every quarter of the TTL (at least a second apart), so
//! an expired entry stays on disk up to that much longer.

use std::time::Duration;

use crate::timer::{Owner, TimeKind};

/// A store's expiry: its TTL in milliseconds, on `clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expiry {
    pub(crate) ttl: i64,
    pub(crate) clock: TimeKind,
}

impl Expiry {
    pub(crate) fn new(ttl: Duration, clock: TimeKind) -> Self {
        Self {
            ttl: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            clock,
        }
    }

    /// Recorded in the store's format: values carry a write time, so a store cannot switch
    /// between with and without expiry (the TTL itself may change freely).
    pub(crate) fn format(&self) -> &'static str {
        match self.clock {
            TimeKind::Stream => ";expiry=stream",
            TimeKind::Wall => ";expiry=wall",
        }
    }

    /// Whether a value written at `written` has expired at `now`.
    pub(crate) fn expired(&self, written: i64, now: i64) -> bool {
        now >= written.saturating_add(self.ttl)
    }

    /// Time between two sweeps.
    pub(crate) fn sweep_interval(&self) -> i64 {
        sweep_interval(self.ttl)
    }

    /// The sweep timer of store `name`, due at `at`.
    pub(crate) fn sweep_timer(&self, name: &str, at: i64) -> crate::timer::Entry {
        (self.clock, at, Owner::Expiry, name.as_bytes().to_vec())
    }
}

/// The clocks a store's TTL may follow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) stream_time: i64,
    /// Added to the system clock (the test driver moves the wall clock).
    pub(crate) wall_offset: i64,
}

impl Clock {
    pub(crate) fn now(&self, kind: TimeKind) -> i64 {
        match kind {
            TimeKind::Stream => self.stream_time,
            TimeKind::Wall => crate::timer::wall_now() + self.wall_offset,
        }
    }
}

/// A quarter of the TTL, at least a second.
pub(crate) fn sweep_interval(ttl: i64) -> i64 {
    (ttl / 4).max(1000)
}

/// `value` prefixed with its write time.
pub(crate) fn stamp(written: i64, mut value: Vec<u8>) -> Vec<u8> {
    value.splice(0..0, written.to_be_bytes());
    value
}

/// The write time and the value of a stamped entry (`None` if too short to be one).
pub(crate) fn unstamp(stamped: &[u8]) -> Option<(i64, &[u8])> {
    let (written, value) = stamped.split_at_checked(8)?;
    Some((i64::from_be_bytes(written.try_into().ok()?), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_expiry_is_exact() {
        let e = Expiry::new(Duration::from_secs(10), TimeKind::Stream);
        let stamped = stamp(5_000, b"v".to_vec());
        assert_eq!(unstamp(&stamped), Some((5_000, &b"v"[..])));
        assert_eq!(unstamp(b"short"), None);
        assert!(!e.expired(5_000, 14_999));
        assert!(e.expired(5_000, 15_000));
        assert_eq!(e.sweep_interval(), 2_500);
        assert_eq!(sweep_interval(100), 1_000, "at least a second");
    }

    mod driven {
        use std::time::Duration;

        use crate::codec::{Bincode, Utf8};
        use crate::testing::{TestDriver, TestRecord};
        use crate::timer::TimeKind;
        use crate::{ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StoreDef};

        /// Counts records per key in a store whose entries expire.
        #[derive(Clone)]
        struct Count(StoreDef<String, u64>);

        impl Handler<String, String> for Count {
            async fn handle(
                &self,
                r: Record<String, String>,
                ctx: &mut PartitionContext,
            ) -> Result<(), HandlerError> {
                let key = r.key.ok_or("no key")?;
                let mut counts = ctx.store(&self.0)?;
                let n = counts.get(&key)?.unwrap_or(0) + 1;
                counts.put(&key, &n)?;
                Ok(())
            }
        }

        async fn driver(
            ttl: Duration,
            clock: TimeKind,
        ) -> (TestDriver<Utf8, Utf8, Count>, StoreDef<String, u64>) {
            let store = StoreDef::new("counts", Utf8, Bincode::new()).with_ttl(ttl, clock);
            let config = ConsumerConfig::builder("unused:9092", "g", ["t"])
                .instance_id("i")
                .state_dir("unused")
                .store(&store)
                .build()
                .unwrap();
            let driver = TestDriver::new(config, Utf8, Utf8, Count(store.clone()))
                .await
                .unwrap();
            (driver, store)
        }

        fn at(key: &str, millis: i64) -> TestRecord<String, String> {
            TestRecord::new(key.to_string(), String::new()).timestamp(millis)
        }

        type Counts = Vec<(String, u64)>;

        fn counts(pairs: &[(&str, u64)]) -> Counts {
            pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn entries_expire_on_stream_time_and_sweeps_tombstone_them() {
            let (mut d, store) = driver(Duration::from_secs(10), TimeKind::Stream).await;
            d.send(at("a", 0)).await.unwrap();
            d.send(at("a", 5_000)).await.unwrap(); // a = 2, written at 5 s
            d.send(at("b", 9_000)).await.unwrap();
            d.flush().await.unwrap();
            d.lose_disk().await.unwrap(); // write times come back with the changelog
            d.send(at("c", 14_999)).await.unwrap();
            assert_eq!(
                d.read(&store).await.unwrap(),
                counts(&[("a", 2), ("b", 1), ("c", 1)])
            );
            // a expired at 15 s (written at 5 s): the handler no longer sees it, though no
            // sweep ran since (the next is due at 17.5 s), and counting starts again.
            d.send(at("a", 16_000)).await.unwrap();
            assert_eq!(
                d.read(&store).await.unwrap(),
                counts(&[("a", 1), ("b", 1), ("c", 1)])
            );
            d.send(at("d", 40_000)).await.unwrap();
            d.flush().await.unwrap();
            assert_eq!(d.read(&store).await.unwrap(), counts(&[("d", 1)]));
            let tombstones: Vec<Vec<u8>> = d
                .changelog()
                .data(0, 0)
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .collect();
            for key in ["a", "b", "c"] {
                assert!(
                    tombstones.contains(&key.as_bytes().to_vec()),
                    "{key} tombstoned in the changelog: {tombstones:?}"
                );
            }
            d.lose_disk().await.unwrap();
            assert_eq!(
                d.read(&store).await.unwrap(),
                counts(&[("d", 1)]),
                "no expired entry returns"
            );
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn entries_expire_on_the_wall_clock() {
            let (mut d, store) = driver(Duration::from_secs(60), TimeKind::Wall).await;
            d.send(at("a", 0)).await.unwrap();
            d.send(at("a", 0)).await.unwrap();
            d.advance_wall_clock(Duration::from_secs(59)).await.unwrap();
            assert_eq!(d.read(&store).await.unwrap(), counts(&[("a", 2)]));
            d.advance_wall_clock(Duration::from_secs(2)).await.unwrap();
            // The sweep runs every 15 s of wall-clock time.
            d.advance_wall_clock(Duration::from_secs(15)).await.unwrap();
            assert!(d.read(&store).await.unwrap().is_empty(), "swept");
            d.send(at("a", 0)).await.unwrap();
            assert_eq!(d.read(&store).await.unwrap(), counts(&[("a", 1)]));
        }
    }
}
