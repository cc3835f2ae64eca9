//! Partition stage: bounded per-partition queues ([`router`]), the worker that runs the
//! handler for one partition ([`worker`]), and the supervisor that starts and stops workers
//! on rebalances ([`supervisor`]).

pub(crate) mod policy;
pub(crate) mod router;
pub(crate) mod scheduler;
pub(crate) mod supervisor;
pub(crate) mod worker;
