//! Partition stage: where a partition's records come from ([`source`]: its own split
//! librdkafka queue), the worker that runs the handler for one partition ([`worker`]; with
//! key-level concurrency, the [`scheduler`] beside it), and the supervisor that starts and
//! stops workers on rebalances ([`supervisor`]).

pub(crate) mod batches;
mod fetch;
pub(crate) mod outputs;
pub(crate) mod policy;
pub(crate) mod scheduler;
pub(crate) mod source;
pub(crate) mod supervisor;
pub(crate) mod worker;
