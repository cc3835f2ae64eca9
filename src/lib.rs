#![doc = include_str!("../README.md")]
//!
//! # Data flow
//!
//! ```text
//!  Kafka ──► librdkafka: one queue per assigned partition ──► partition worker ──► handler
//!            (bounded; a full one is not fetched)            (polls its queue;     │
//!  poll loop: rebalances, commits, statistics                 restore first;      │ state writes
//!            (one thread; never records, never user code)     decode; in order)   ▼
//!               ▲                                       overlay (read-your-writes, combined per key)
//!               │ commit durable offsets                              │ flush
//!               └──── offset tracker ◄── durable ◄── changelog produce (acked) + markers
//!                                                    ──► RocksDB WriteBatch + checkpoint
//! ```
//!
//! Under exactly-once, each flush is a unit of the member's open transaction (outputs,
//! changelog records, offsets), a coordinator thread commits it every interval, and
//! "durable" means committed: RocksDB is written after the commit (`changelog::transaction`).
//!
//! Modules follow that flow: [`config`] → `consumer` (poll loop, rebalance glue) →
//! `partition` (source, worker and its batch mode, scheduler, supervisor) → [`table`],
//! [`state`] (RocksDB, overlay, restore) → `changelog` → `offset`. [`query`] reads the
//! flushed state from outside, beside that flow.
//! Imports point one way along it: no file reaches itself through the files it imports
//! (`tests/module_graph.rs` checks), so a setting or stats type lives in a plain file of its
//! feature that both `config`/`observe` and the feature read.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rustdoc::broken_intra_doc_links
)]
#![deny(unsafe_code)] // audited exceptions: `consumer::poll_loop::has_member_id`, `consumer::commit::commit_queued`, `partition::fetch`, `changelog::produce`

mod batch;
pub mod changelog;
pub mod codec;
pub mod config;
mod consumer;
mod context;
mod error;
mod handler;
pub mod observe;
mod offset;
pub mod output;
mod partition;
pub mod query;
mod shutdown;
mod standby;
pub mod state;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timer;
pub mod window;

pub use codec::{Codec, CodecError};
pub use config::{
    AssignmentStrategy, CloseBehavior, Compression, ConfigError, ConsumerConfig,
    ConsumerConfigBuilder, ErrorPolicy, LatePolicy, Membership, MissingTopics, ProcessingGuarantee,
    RetryPolicy,
};
pub use consumer::StatefulConsumer;
pub use error::{Error, Result};
pub use handler::{
    fatal, is_fatal, retryable, FatalError, Handler, HandlerError, PartitionContext, Record,
};
pub use observe::{RebalanceListener, RestoreListener, Stats, StatsSnapshot};
pub use output::Output;
pub use partition::batches::BatchSettings;
pub use query::StateQuery;
pub use shutdown::shutdown_signal;
pub use standby::{StandbyReplicas, StandbyStats};
pub use state::{StateError, Store, StoreDef};
pub use table::{Table, TableDef, TableError};
