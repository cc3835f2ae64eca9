use super::*;
use crate::codec::{Bincode, Utf8};
use crate::Codec;
use crate::{ConsumerConfig, ErrorPolicy, HandlerError, PartitionContext, Record};

/// Counts values per key; fails on "bad", panics on "boom".
#[derive(Clone)]
struct Count(StoreDef<String, u64>);

impl Handler<String, String> for Count {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> std::result::Result<(), HandlerError> {
        let value = r.value.unwrap_or_default();
        if value == "bad" {
            return Err("bad value".into());
        }
        assert!(value != "boom", "boom at {}", r.offset);
        let key = r.key.ok_or("no key")?;
        let mut s = ctx.store(&self.0)?;
        let n = s.get(&key)?.unwrap_or(0) + 1;
        s.put(&key, &n)?;
        Ok(())
    }
}

fn store() -> StoreDef<String, u64> {
    StoreDef::new("counts", Utf8, Bincode::new())
}

async fn driver(policy: ErrorPolicy) -> TestDriver<Utf8, Utf8, Count> {
    let store = store();
    let config = ConsumerConfig::builder("unused:9092", "g", ["t"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .store(&store)
        .error_policy(policy)
        .build()
        .unwrap();
    TestDriver::new(config, Utf8, Utf8, Count(store))
        .await
        .unwrap()
}

fn rec(key: &str, value: &str) -> TestRecord<String, String> {
    TestRecord::new(key.to_string(), value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_flushes_crashes_and_a_lost_disk_exactly_once() {
    let mut d = driver(ErrorPolicy::Fail).await;
    for key in ["a", "b", "a"] {
        d.send(rec(key, "x")).await.unwrap();
    }
    d.flush().await.unwrap();
    assert_eq!(
        d.restored_records(),
        0,
        "intact local state: nothing replayed"
    );
    d.send(rec("a", "x")).await.unwrap();
    // Unflushed: lost by the crash, then delivered again from the committed offset.
    d.crash().await.unwrap();
    let counts = d.read(&store()).await.unwrap();
    assert_eq!(counts, vec![("a".into(), 3), ("b".into(), 1)]);
    d.lose_disk().await.unwrap();
    assert!(d.restored_records() > 0, "rebuilt from the changelog");
    assert_eq!(d.read(&store()).await.unwrap(), counts);
    assert!(!d.changelog().is_empty(0, 0));
}

/// Counts per key and sends each new count to "counts-out".
#[derive(Clone)]
struct CountAndSend(StoreDef<String, u64>, crate::Output<String, u64>);

impl Handler<String, String> for CountAndSend {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> std::result::Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        let n = {
            let mut s = ctx.store(&self.0)?;
            let n = s.get(&key)?.unwrap_or(0) + 1;
            s.put(&key, &n)?;
            n
        };
        ctx.send(&self.1, Some(&key), Some(&n))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_counts_only_once_its_output_is_acknowledged() {
    let output = crate::Output::new("counts-out", Utf8, Bincode::<u64>::new());
    let config = |policy| {
        ConsumerConfig::builder("unused:9092", "g", ["t"])
            .instance_id("i")
            .state_dir("/nonexistent")
            .store(&store())
            .error_policy(policy)
            .build()
            .unwrap()
    };
    let handler = CountAndSend(store(), output.clone());
    let mut d = TestDriver::new(config(ErrorPolicy::Fail), Utf8, Utf8, handler.clone())
        .await
        .unwrap();
    d.send(rec("a", "x")).await.unwrap();
    d.send(rec("a", "x")).await.unwrap();
    let sent = d.sent_to("counts-out");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].value,
        Some(Bincode::<u64>::new().encode(&2).unwrap())
    );
    d.fail_sends(true);
    let err = d.send(rec("a", "x")).await.unwrap_err();
    assert!(matches!(err, Error::Output { offset: 2, .. }), "{err}");

    // Under Skip, the record whose output failed is skipped, and its state write with it.
    let mut d = TestDriver::new(config(ErrorPolicy::Skip), Utf8, Utf8, handler)
        .await
        .unwrap();
    d.send(rec("a", "x")).await.unwrap();
    d.fail_sends(true);
    d.send(rec("a", "x")).await.unwrap();
    d.fail_sends(false);
    assert_eq!(d.skipped(), 1);
    assert_eq!(d.read(&store()).await.unwrap(), vec![("a".into(), 1)]);
    assert_eq!(d.sent_to("counts-out").len(), 1);
}

/// Sends one output record per record and writes no state.
#[derive(Clone, Default)]
struct Forward {
    output: Option<crate::Output<String, String>>,
    calls: Arc<std::sync::atomic::AtomicU64>,
}

impl Handler<String, String> for Forward {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> std::result::Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(output) = &self.output {
            ctx.send(output, r.key.as_ref(), r.value.as_ref())?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_only_sends_is_not_committed_before_its_output_is_acknowledged() {
    let handler = Forward {
        output: Some(crate::Output::new("forwarded", Utf8, Utf8)),
        ..Forward::default()
    };
    let config = ConsumerConfig::builder("unused:9092", "g", ["t"])
        .instance_id("i")
        .build()
        .unwrap();
    let mut d = TestDriver::new(config, Utf8, Utf8, handler.clone())
        .await
        .unwrap();
    d.hold_acks(true);
    d.send(rec("a", "x")).await.unwrap();
    d.send(rec("b", "y")).await.unwrap();
    // Killed before the broker acknowledged the outputs: both records come again.
    d.crash().await.unwrap();
    assert_eq!(handler.calls.load(Ordering::Relaxed), 4);
    d.hold_acks(false);
    d.send(rec("c", "z")).await.unwrap();
    d.flush().await.unwrap();
    d.crash().await.unwrap();
    // Acknowledged and flushed: nothing comes again.
    assert_eq!(handler.calls.load(Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_panics_surface_as_each_policy_says() {
    let mut d = driver(ErrorPolicy::Fail).await;
    d.send(rec("a", "x")).await.unwrap();
    let err = d.send(rec("a", "bad")).await.unwrap_err();
    assert!(matches!(err, Error::Handler { offset: 1, .. }), "{err}");

    let mut d = driver(ErrorPolicy::Fail).await;
    let err = d.send(rec("a", "boom")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { offset: 0, message, .. } if message.contains("boom at 0")),
        "{err}"
    );

    let mut d = driver(ErrorPolicy::Skip).await;
    d.send(rec("a", "bad")).await.unwrap();
    d.send(rec("a", "boom")).await.unwrap();
    d.send(rec("a", "x")).await.unwrap();
    assert_eq!(d.skipped(), 2);
    assert_eq!(d.read(&store()).await.unwrap(), vec![("a".into(), 1)]);

    let mut d = driver(ErrorPolicy::DeadLetter("dlq".into())).await;
    d.send(rec("k", "bad")).await.unwrap();
    d.send_raw(Some(b"k".to_vec()), Some(vec![0xff]), None, vec![])
        .await
        .unwrap();
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].topic, "dlq");
    assert_eq!(dead[0].value.as_deref(), Some(&b"bad"[..]));
    let kind = |r: &CapturedRecord| {
        r.headers
            .iter()
            .find(|(k, _)| k == "ks.error.kind")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(kind(&dead[0]).as_deref(), Some("handler"));
    assert_eq!(
        kind(&dead[1]).as_deref(),
        Some("decode"),
        "invalid UTF-8 value"
    );
}
