//! The consumer against secured listeners of a real broker (a nisshi of the test's own, on its
//! own port): TLS with a CA made in the test, SASL/SCRAM over TLS — with state, changelog
//! and output records all going through them — and the misconfigurations a user meets
//! first (wrong password, unknown CA, expired certificate), each of which must end `run()`
//! with the cause named within a bounded time, never look like an idle consumer.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DurableBroker, Pki};
use kafka_stateful::codec::{Bincode, Utf8};
use kafka_stateful::{
    ConsumerConfig, ConsumerConfigBuilder, Error, Handler, HandlerError, Output, PartitionContext,
    Record, StatefulConsumer, StoreDef,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);
/// How long a misconfigured consumer may take to say so.
const FAIL_WITHIN: Duration = Duration::from_secs(45);
const USER: &str = "page-counts";
const PASSWORD: &str = "correct horse battery staple";

/// Client settings for the secured listener, as a user would write them.
#[derive(Clone)]
struct Security {
    bootstrap: String,
    settings: Vec<(&'static str, String)>,
}

impl Security {
    fn tls(broker: &DurableBroker, ca: &std::path::Path) -> Self {
        Self {
            bootstrap: broker.bootstrap(),
            settings: vec![
                ("security.protocol", "SSL".into()),
                ("ssl.ca.location", ca.to_string_lossy().into_owned()),
            ],
        }
    }

    fn scram(broker: &DurableBroker, ca: &std::path::Path, password: &str) -> Self {
        let mut s = Self::tls(broker, ca);
        s.settings[0].1 = "SASL_SSL".into();
        s.settings.extend([
            ("sasl.mechanism", "SCRAM-SHA-256".into()),
            ("sasl.username", USER.into()),
            ("sasl.password", password.into()),
        ]);
        s
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.settings {
            c.set(*k, v);
        }
        c
    }

    fn consumer(&self, group: &str, topic: &str, dir: &std::path::Path) -> ConsumerConfigBuilder {
        let mut b = ConsumerConfig::builder(&self.bootstrap, group, [topic])
            .instance_id("secure-0")
            .state_dir(dir)
            .store(&counts())
            .commit_interval(Duration::from_millis(200))
            .flush_interval(Duration::from_millis(100))
            .session_timeout(Duration::from_secs(10));
        for (k, v) in &self.settings {
            b = b.set_all_clients(*k, v.clone());
        }
        b
    }

    async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().request_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .unwrap();
        for r in results {
            r.unwrap();
        }
    }

    async fn produce(&self, topic: &str, records: &[(i32, String, String)]) {
        let producer: FutureProducer = self.client().create().unwrap();
        for (p, k, v) in records {
            producer
                .send(
                    FutureRecord::to(topic).partition(*p).key(k).payload(v),
                    Duration::from_secs(20),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// How many records `topic` holds (all partitions), by reading them.
    fn count_records(&self, topic: &str, partitions: i32, expect: usize) -> usize {
        let c: BaseConsumer = self
            .client()
            .set("group.id", common::unique("reader"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let (mut n, deadline) = (0, Instant::now() + WAIT);
        while n < expect && Instant::now() < deadline {
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                n += 1;
            }
        }
        n
    }
}

fn counts() -> StoreDef<String, u64> {
    StoreDef::new("counts", Utf8, Bincode::new())
}

/// Counts per key and sends the new count of the key to an output topic.
#[derive(Clone)]
struct CountAndSend {
    store: StoreDef<String, u64>,
    output: Output<String, String>,
    handled: Arc<AtomicU64>,
}

impl Handler<String, String> for CountAndSend {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("record without key")?;
        let mut store = ctx.store(&self.store)?;
        let n = store.get(&key)?.unwrap_or(0) + 1;
        store.put(&key, &n)?;
        ctx.send(&self.output, Some(&key), Some(&n.to_string()))?;
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A job with state, changelog and outputs, run to the end of its input over `security`:
/// every record handled, counted exactly, and its changelog and outputs on the broker.
async fn job_runs_over(security: &Security) {
    let (topic, output, group) = (
        common::unique("secure-in"),
        common::unique("secure-out"),
        common::unique("g"),
    );
    security.create_topic(&topic, 2).await;
    security.create_topic(&output, 2).await;
    let records = common::records(2, 20, 200);
    security.produce(&topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let handler = CountAndSend {
        store: counts(),
        output: Output::new(&output, Utf8, Utf8),
        handled: Arc::default(),
    };
    let config = security
        .consumer(&group, &topic, dir.path())
        .build()
        .unwrap();
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stop_rx.await;
    }));
    let handled = handler.handled.clone();
    common::wait_until(
        "every record handled over the secured listener",
        WAIT,
        || handled.load(Ordering::Relaxed) == records.len() as u64 || run.is_finished(),
    )
    .await;
    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, run)
        .await
        .expect("shutdown")
        .unwrap()
        .expect("run() over the secured listener");
    assert_eq!(handled.load(Ordering::Relaxed), records.len() as u64);
    assert_eq!(
        security.count_records(&output, 2, records.len()),
        records.len(),
        "one output record per input"
    );
    let changelog = format!("{group}-counts-changelog");
    let keys: HashMap<_, _> = common::expected_counts(&records);
    assert!(
        security.count_records(&changelog, 2, keys.len()) >= keys.len(),
        "the changelog holds every key"
    );
}

/// `run()` with `security` ends, within [`FAIL_WITHIN`], with `Error::Connection` whose
/// message contains `cause`.
async fn run_fails_naming(security: &Security, cause: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = security
        .consumer(&common::unique("g"), "never-reached", dir.path())
        .build()
        .unwrap();
    let handler = CountAndSend {
        store: counts(),
        output: Output::new("unused", Utf8, Utf8),
        handled: Arc::default(),
    };
    let started = Instant::now();
    let result = tokio::time::timeout(
        FAIL_WITHIN,
        StatefulConsumer::new(config, Utf8, Utf8, handler).run(std::future::pending()),
    )
    .await
    .expect("run() ends instead of retrying the handshake forever");
    let err = result.unwrap_err();
    assert!(matches!(&err, Error::Connection { .. }), "{err}");
    assert!(err.to_string().contains(cause), "{cause:?} not in: {err}");
    eprintln!("failed after {:?}: {err}", started.elapsed());
}

macro_rules! broker_or_skip {
    () => {{
        common::require_broker!();
        match common::nisshi_binary() {
            Some(binary) => binary,
            None => return,
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_with_state_and_outputs_runs_over_tls_with_a_ca_made_in_the_test() {
    let nisshi = broker_or_skip!();
    common::init_tracing();
    let pki = Pki::new();
    let broker = DurableBroker::start_with(nisshi, pki.broker_args("server.pem")).await;
    job_runs_over(&Security::tls(&broker, &pki.path("ca.pem"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_logs_in_with_scram_over_tls_and_a_wrong_password_ends_run_naming_it() {
    let nisshi = broker_or_skip!();
    common::init_tracing();
    let pki = Pki::new();
    // SCRAM users live in the broker's storage: made on a plain listener, then the broker
    // restarts on the same storage with TLS and authentication required.
    let mut broker = DurableBroker::start(nisshi).await;
    let url = format!("tcp://{}", broker.bootstrap());
    broker.command(&[
        "user",
        "create",
        "--broker",
        &url,
        "--mechanism",
        "scram256",
        USER,
        PASSWORD,
    ]);
    broker.kill().await;
    broker.args = pki.broker_args("server.pem");
    broker.args.push("--authentication".into());
    broker.resume().await;

    let ca = pki.path("ca.pem");
    job_runs_over(&Security::scram(&broker, &ca, PASSWORD)).await;
    run_fails_naming(&Security::scram(&broker, &ca, "wrong"), "uthentication").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_certificate_from_an_unknown_ca_ends_run_naming_it() {
    let nisshi = broker_or_skip!();
    common::init_tracing();
    let pki = Pki::new();
    let broker = DurableBroker::start_with(nisshi, pki.broker_args("server.pem")).await;
    let security = Security::tls(&broker, &pki.path("other-ca.pem"));
    run_fails_naming(&security, "certificate verify failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_broker_certificate_ends_run_naming_it() {
    let nisshi = broker_or_skip!();
    common::init_tracing();
    let pki = Pki::new();
    let broker = DurableBroker::start_with(nisshi, pki.broker_args("expired.pem")).await;
    let security = Security::tls(&broker, &pki.path("ca.pem"));
    run_fails_naming(&security, "expired").await;
}
