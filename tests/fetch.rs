//! Records reach the handler exactly as produced — keys and values (absent and empty),
//! headers (with and without values), timestamps — in offset order per partition, through
//! the batch reads of a partition's librdkafka queue (`partition::fetch`), with small and
//! large records mixed (a large record lowers how many records one read takes).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::require_broker;
use kafka_stateful::codec::{RawBytes, Utf8};
use kafka_stateful::{ConsumerConfig, Handler, HandlerError, PartitionContext, Record};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const PARTITIONS: i32 = 2;
const RECORDS: usize = 6_000;
const BASE_TS: i64 = 1_700_000_000_000;

/// What a record carries: key, value, headers, timestamp.
type Seen = (
    Option<String>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
    Option<i64>,
);

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<PerPartition>>);

/// Per partition, the records handled: offset and what it carried.
type PerPartition = BTreeMap<i32, Vec<(i64, Seen)>>;

impl Handler<String, Vec<u8>> for Collect {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        _ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let seen = (r.key, r.value, r.headers, r.timestamp);
        let mut all = self.0.lock().unwrap();
        all.entry(r.partition).or_default().push((r.offset, seen));
        Ok(())
    }
}

/// The `i`th record: every 7th without a key, every 11th without a value, every 13th with
/// an empty one, every 3rd with two headers (one without a value), every 997th 200 kB.
fn record(i: usize) -> Seen {
    let key = (!i.is_multiple_of(7)).then(|| format!("k{i}"));
    let value = match i {
        _ if i.is_multiple_of(11) => None,
        _ if i.is_multiple_of(13) => Some(Vec::new()),
        _ if i.is_multiple_of(997) => Some(vec![b'x'; 200_000]),
        _ => Some(format!("value {i}").into_bytes()),
    };
    let headers = if i.is_multiple_of(3) {
        vec![
            ("n".to_string(), Some(i.to_string().into_bytes())),
            ("none".to_string(), None),
        ]
    } else {
        Vec::new()
    };
    (key, value, headers, Some(BASE_TS + i as i64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_reach_the_handler_exactly_as_produced_in_offset_order() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("fetch"), common::unique("g"));
    common::create_topic(&topic, PARTITIONS).await;
    let producer = common::producer_at(&common::bootstrap());
    let mut expected: BTreeMap<i32, Vec<Seen>> = BTreeMap::new();
    let mut acks = Vec::new();
    for i in 0..RECORDS {
        let (key, value, headers, ts) = record(i);
        let partition = (i % PARTITIONS as usize) as i32;
        let mut owned = OwnedHeaders::new();
        for (name, value) in &headers {
            owned = owned.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut r: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(&topic)
            .partition(partition)
            .timestamp(ts.unwrap());
        if let Some(key) = &key {
            r = r.key(key);
        }
        if let Some(value) = &value {
            r = r.payload(value);
        }
        if !headers.is_empty() {
            r = r.headers(owned);
        }
        acks.push(producer.send_result(r).unwrap());
        expected
            .entry(partition)
            .or_default()
            .push((key, value, headers, ts));
    }
    for ack in acks {
        ack.await.unwrap().unwrap();
    }

    let handler = Collect::default();
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("fetch-0")
        .commit_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let consumer = kafka_stateful::StatefulConsumer::new(config, Utf8, RawBytes, handler.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    common::wait_until("every record handled", Duration::from_secs(90), || {
        handler
            .0
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= RECORDS
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    let seen = handler.0.lock().unwrap().clone();
    for (partition, want) in &expected {
        let got = &seen[partition];
        let offsets: Vec<i64> = got.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(
            offsets,
            (0..want.len() as i64).collect::<Vec<_>>(),
            "partition {partition}: every offset once, in order"
        );
        for (i, ((_, got), want)) in got.iter().zip(want).enumerate() {
            assert_eq!(got, want, "partition {partition}, offset {i}");
        }
    }
}
