//! Lifecycle hooks and error classification against a real broker.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::codec::{Bincode, Utf8};
use kafka_stateful::{
    fatal, ConsumerConfig, ErrorPolicy, Handler, HandlerError, PartitionContext, Record,
    RetryPolicy, StatefulConsumer, StoreDef,
};

const WAIT: Duration = Duration::from_secs(60);

/// Counts records per key; its hooks count their own calls in the same store, and note
/// what they saw.
#[derive(Clone)]
struct Hooked {
    store: StoreDef<String, u64>,
    assigned_seen: Arc<Mutex<Vec<u64>>>,
    revoked_seen: Arc<Mutex<Vec<u64>>>,
    ready: Arc<AtomicBool>,
    handled: Arc<Mutex<u64>>,
}

impl Handler<String, String> for Hooked {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        assert!(
            self.ready.load(Ordering::SeqCst),
            "a record arrived before on_assigned"
        );
        let key = r.key.ok_or("no key")?;
        let mut s = ctx.store(&self.store)?;
        let n = s.get(&key)?.unwrap_or(0) + 1;
        s.put(&key, &n)?;
        *self.handled.lock().unwrap() += 1;
        Ok(())
    }

    async fn on_assigned(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        let mut s = ctx.store(&self.store)?;
        // What the previous owner's on_revoked wrote is restored before this runs.
        let revoked = s.get(&"_revoked".to_string())?.unwrap_or(0);
        self.assigned_seen.lock().unwrap().push(revoked);
        let n = s.get(&"_assigned".to_string())?.unwrap_or(0) + 1;
        s.put(&"_assigned".to_string(), &n)?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn on_revoked(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        let mut s = ctx.store(&self.store)?;
        let handled = s.get(&"key-0".to_string())?.unwrap_or(0);
        self.revoked_seen.lock().unwrap().push(handled);
        let n = s.get(&"_revoked".to_string())?.unwrap_or(0) + 1;
        s.put(&"_revoked".to_string(), &n)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_run_around_a_partitions_life_with_store_access_and_their_writes_persist() {
    require_broker!();
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("hooks"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 1, 20)).await;
    let hooked = || Hooked {
        store: StoreDef::new("counts", Utf8, Bincode::new()),
        assigned_seen: Arc::default(),
        revoked_seen: Arc::default(),
        ready: Arc::default(),
        handled: Arc::default(),
    };
    let build = |h: &Hooked| {
        ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
            .instance_id("hooks-0")
            .session_timeout(Duration::from_secs(10))
            .state_dir(dir.path())
            .store(&h.store)
            .build()
            .unwrap()
    };
    let first = hooked();
    let running = Running::start(StatefulConsumer::new(
        build(&first),
        Utf8,
        Utf8,
        first.clone(),
    ));
    common::wait_until("first run handled", WAIT, || {
        *first.handled.lock().unwrap() == 20
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(*first.assigned_seen.lock().unwrap(), vec![0]);
    assert_eq!(
        *first.revoked_seen.lock().unwrap(),
        vec![20],
        "on_revoked ran after the last record, with store access"
    );

    common::produce(&topic, &common::records(1, 1, 5)).await;
    let second = hooked();
    let running = Running::start(StatefulConsumer::new(
        build(&second),
        Utf8,
        Utf8,
        second.clone(),
    ));
    common::wait_until("second run handled", WAIT, || {
        *second.handled.lock().unwrap() == 5
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(
        *second.assigned_seen.lock().unwrap(),
        vec![1],
        "on_assigned ran after the restore and saw on_revoked's write of the previous run"
    );
    assert_eq!(*second.revoked_seen.lock().unwrap(), vec![25]);
}

/// Fails on chosen offsets: fatally or not; counts attempts per offset.
#[derive(Clone, Default)]
struct Failing {
    fatal_at: i64,
    plain_at: i64,
    attempts: Arc<Mutex<HashMap<i64, u32>>>,
}

impl Handler<String, String> for Failing {
    async fn handle(
        &self,
        r: Record<String, String>,
        _ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        *self.attempts.lock().unwrap().entry(r.offset).or_default() += 1;
        if r.offset == self.fatal_at {
            return Err(fatal("this record can never be handled"));
        }
        if r.offset == self.plain_at {
            return Err("a downstream service is unavailable".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fatal_handler_errors_skip_the_retries_and_retryable_ones_use_them() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("fatal"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 10)).await;
    let handler = Failing {
        fatal_at: 3,
        plain_at: 6,
        ..Failing::default()
    };
    let c = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("fatal-0")
        .commit_interval(Duration::from_millis(200))
        .error_policy(ErrorPolicy::Skip)
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        })
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, handler.clone()));
    common::wait_until("everything committed", WAIT, || {
        common::committed(&group, &topic, 1) == vec![10]
    })
    .await;
    running.stop().await.unwrap();
    let attempts = handler.attempts.lock().unwrap().clone();
    assert_eq!(attempts[&3], 1, "a fatal error is not retried");
    assert_eq!(attempts[&6], 4, "a retryable error gets its 3 retries");
    assert_eq!(attempts[&0], 1);
}
