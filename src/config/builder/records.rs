//! [`ConsumerConfigBuilder`] setters for handling records: failures, late records, retries
//! and key-level concurrency.

use super::ConsumerConfigBuilder;
use crate::config::{ErrorPolicy, LatePolicy, RetryPolicy};

impl ConsumerConfigBuilder {
    /// Policy for undecodable records and failing handlers (default [`ErrorPolicy::Fail`]).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.config.error_policy = policy;
        self
    }

    /// What to do with records late for every window they fall in (default
    /// [`LatePolicy::Drop`]).
    pub fn late_records(mut self, policy: LatePolicy) -> Self {
        self.config.late_policy = policy;
        self
    }

    /// Handler retries before the error policy applies (default: none).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Key-level concurrency (default 1: the records of a partition are handled one at a
    /// time, in offset order). With `n > 1`, up to `n` records of a partition are in flight
    /// at once — records of one key (a missing key is one key) still one at a time, in
    /// offset order — for handlers that wait on something (a service call per record):
    /// a hot key runs at serial speed without holding up the other keys. See the README's
    /// "Slow handlers".
    ///
    /// A record's state writes join the partition's state when it succeeds (its output
    /// records acknowledged), all at once; other records see them from then on. Reading or
    /// writing another key than the record's own is allowed but not ordered with that key's
    /// records. The committed offset is the lowest unfinished one, after a flush of
    /// everything finished; the records finished after it are recorded with the state, so a
    /// restart or a new owner does not apply them twice. Windows, timers and TTL stores need
    /// records one at a time and are refused by [`build`](Self::build).
    pub fn key_concurrency(mut self, records: usize) -> Self {
        self.config.key_concurrency = records;
        self
    }

    /// Batch mode: the worker hands each partition's records to
    /// [`Handler::handle_batch`](crate::Handler::handle_batch) in runs of up to
    /// `settings.max_records`, gathering for at most `settings.max_wait` after a batch's
    /// first record (and never more bytes than the partition's queue budget) — for sinks
    /// where one call with 500 rows costs about what one row costs. Defaults
    /// ([`BatchSettings::default`](crate::BatchSettings)): 500 records, 100 ms. See the
    /// README's "Batches and sinks" for errors (a failing batch is split to find the record
    /// that fails) and for storing offsets with the data. Not with key concurrency.
    pub fn batches(mut self, settings: crate::BatchSettings) -> Self {
        self.config.batches = Some(settings);
        self
    }

    /// With [`key_concurrency`](Self::key_concurrency): a record starts only if its offset is
    /// less than this many past the lowest unfinished offset of its partition (default
    /// 10 000), so a stuck key bounds the records held and replayed after a crash.
    pub fn concurrency_lookahead(mut self, records: usize) -> Self {
        self.config.concurrency_lookahead = records;
        self
    }
}
