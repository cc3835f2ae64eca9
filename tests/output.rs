//! Output records against a real broker: produced when a record succeeds, committed past only
//! once acknowledged, never for a record that failed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::{
    ConsumerConfig, Error, Handler, HandlerError, Output, PartitionContext, Record,
    StatefulConsumer, StoreDef,
};

const WAIT: Duration = Duration::from_secs(60);

/// Counts per key and sends `{key: count}` for every record; fails on `fail_at`.
#[derive(Clone)]
struct CountAndEmit {
    store: StoreDef<String, u64>,
    output: Output<String, u64>,
    fail_at: Option<i64>,
}

impl Handler<String, String> for CountAndEmit {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        let n = {
            let mut s = ctx.store(&self.store)?;
            let n = s.get(&key)?.unwrap_or(0) + 1;
            s.put(&key, &n)?;
            n
        };
        ctx.send(&self.output, Some(&key), Some(&n))?;
        if Some(r.offset) == self.fail_at {
            return Err("failed after sending".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_records_output_is_never_sent_nor_its_offset_committed() {
    require_broker!();
    common::init_tracing();
    let (topic, out, group, dir) = (
        common::unique("out-src"),
        common::unique("out"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    common::create_topic(&out, 1).await;
    let records = common::records(1, 4, 40);
    common::produce(&topic, &records).await;
    let handler = |fail_at| CountAndEmit {
        store: StoreDef::new("counts", Utf8, Bincode::new()),
        output: Output::new(&out, Utf8, Json::new()),
        fail_at,
    };
    let build = |h: &CountAndEmit| {
        ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
            .instance_id("out-0")
            .commit_interval(Duration::from_millis(200))
            .state_dir(dir.path())
            .store(&h.store)
            .build()
            .unwrap()
    };
    let failing = handler(Some(25));
    let running = Running::start(StatefulConsumer::new(build(&failing), Utf8, Utf8, failing));
    let err = tokio::time::timeout(WAIT, running.join)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Handler { offset: 25, .. }), "{err}");
    assert_eq!(common::committed(&group, &topic, 1), vec![25]);
    assert_eq!(
        common::read_all(&out, 1).len(),
        25,
        "the failed record's output was discarded with it"
    );

    let fixed = handler(None);
    let running = Running::start(StatefulConsumer::new(build(&fixed), Utf8, Utf8, fixed));
    common::wait_until("all committed", WAIT, || {
        common::committed(&group, &topic, 1) == vec![40]
    })
    .await;
    running.stop().await.unwrap();
    let sent = common::read_all(&out, 1);
    assert_eq!(sent.len(), 40, "one output per record, none twice here");
    // The last output of each key holds its count: the state was applied exactly once.
    let mut last = HashMap::new();
    for (key, value, _) in &sent {
        let key = String::from_utf8(key.clone().unwrap()).unwrap();
        let n: u64 = serde_json::from_slice(value.as_ref().unwrap()).unwrap();
        last.insert(key, n);
    }
    assert_eq!(last, common::expected_counts(&records));
}

/// Outputs are produced while handling goes on, so an output can be lost after its record's
/// handler returned (here: the output topic does not exist and the producer gives up on it).
/// The flush that would make the record durable finds that first: `run()` ends with
/// `Error::Output` naming the record, and nothing — no offset, no changelog record — is
/// committed past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_lost_after_its_handler_returned_ends_run_and_nothing_is_committed_past_it() {
    require_broker!();
    common::init_tracing();
    let (topic, missing, group, dir) = (
        common::unique("out-src"),
        common::unique("never-created"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    let records = common::records(1, 4, 20);
    common::produce(&topic, &records).await;
    let handler = CountAndEmit {
        store: StoreDef::new("counts", Utf8, Bincode::new()),
        output: Output::new(&missing, Utf8, Json::new()),
        fail_at: None,
    };
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("out-lost-0")
        .commit_interval(Duration::from_millis(200))
        .state_dir(dir.path())
        .store(&handler.store)
        // The producer may not create the topic, and gives up on it soon.
        .set_all_clients("allow.auto.create.topics", "false")
        .set_all_clients("topic.metadata.propagation.max.ms", "1000")
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(config, Utf8, Utf8, handler));
    let err = tokio::time::timeout(WAIT, running.join)
        .await
        .expect("run() ends when an output is lost")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Output { offset: 0, .. }),
        "the first record's output was lost: {err}"
    );
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(
        common::committed(&group, &topic, 1)[0] <= 0,
        "nothing committed past the record whose output was lost"
    );
    let changelog = format!("{group}-counts-changelog");
    let flushed = common::read_all(&changelog, 1)
        .iter()
        // Marker keys (epoch, flush) start with a NUL byte; data keys are the store's.
        .filter(|(key, _, _)| key.as_ref().is_some_and(|k| k.first() != Some(&0)))
        .count();
    assert_eq!(flushed, 0, "no state flushed past it");
}

/// Exactly-once on a broker without transactions (nisshi refuses them on purpose) is a
/// clear error at start, not a consumer that runs at-least-once or hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_broker_without_transactions_ends_run_saying_so() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("out-eos"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    let handler = CountAndEmit {
        store: StoreDef::new("counts", Utf8, Bincode::new()),
        output: Output::new(&common::unique("out-eos-out"), Utf8, Json::new()),
        fail_at: None,
    };
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("out-eos-0")
        .processing_guarantee(kafka_stateful::ProcessingGuarantee::ExactlyOnce)
        .build()
        .unwrap();
    let mut running = Running::start(StatefulConsumer::new(config, Utf8, Utf8, handler));
    let ended = tokio::time::timeout(Duration::from_secs(30), &mut running.join).await;
    let Ok(ended) = ended else {
        // An Apache Kafka (docker compose) has transactions: the consumer simply runs.
        println!(
            "the broker at {} has transactions: nothing to refuse",
            common::bootstrap()
        );
        running.stop().await.unwrap();
        return;
    };
    let err = ended.unwrap().unwrap_err();
    match &err {
        Error::Transaction { reason } => assert!(
            reason.contains("could not start transactions"),
            "names the cause: {reason}"
        ),
        other => panic!("expected Error::Transaction, got {other}"),
    }
}
