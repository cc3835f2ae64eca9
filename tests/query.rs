//! Reading state from outside the handler (`StateQuery`) against a real broker: answers
//! while records flow never run ahead of the input nor go back, are exact once the input is
//! handled, say "not ready" (never a wrong answer) while a restarted member restores, and
//! name the owner of a key another member owns. The unique-visitors example's HTTP server
//! answers from the same handle.

mod common;
#[path = "../examples/unique_visitors/http.rs"]
mod http;
#[path = "../examples/unique_visitors/job.rs"]
#[allow(dead_code)]
mod job;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{require_broker, Counter, Running};
use kafka_stateful::codec::{Json, Utf8};
use kafka_stateful::query::QueryError;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use rdkafka::producer::FutureRecord;

const PARTITIONS: i32 = 4;
const KEYS: usize = 12;

fn config(topic: &str, group: &str, instance: &str, dir: &Path) -> ConsumerConfig {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id(instance)
        .session_timeout(Duration::from_secs(10))
        .flush_interval(Duration::from_millis(100))
        .commit_interval(Duration::from_millis(100))
        .state_dir(dir)
        .store(&common::counts_store())
        .build()
        .unwrap()
}

/// Produces `n` records keyed `key-<i % KEYS>` with librdkafka's default partitioner (as
/// `StateQuery::get` assumes); returns the count per key.
async fn produce_keyed(topic: &str, n: usize, counts: &mut HashMap<String, u64>) {
    let producer = common::producer_at(&common::bootstrap());
    let keys: Vec<String> = (0..n).map(|i| format!("key-{}", i % KEYS)).collect();
    let acks: Vec<_> = keys
        .iter()
        .map(|k| {
            producer
                .send_result(FutureRecord::to(topic).key(k).payload("v"))
                .unwrap()
        })
        .collect();
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_read_flushed_counts_while_records_flow_and_say_not_ready_during_a_restore() {
    require_broker!();
    let topic = common::unique("query");
    let group = common::unique("query-group");
    common::create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut expected = HashMap::new();
    produce_keyed(&topic, 2_000, &mut expected).await;
    let consumer = StatefulConsumer::new(
        config(&topic, &group, "q-0", dir.path()),
        Utf8,
        Utf8,
        Counter::default(),
    );
    let query = consumer.query();
    let running = Running::start(consumer);
    let store = common::counts_store();
    common::wait_until("every partition assigned", Duration::from_secs(60), || {
        query.partitions().len() == PARTITIONS as usize
    })
    .await;
    // While records flow (more are produced meanwhile): an answer is never above what was
    // produced, and a key's answers never go back.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut more = HashMap::new();
            produce_keyed(&topic, 6_000, &mut more).await;
            more
        })
    };
    let mut answers = 0;
    let flowing = std::time::Instant::now() + Duration::from_secs(120);
    while !producing.is_finished() || answers < 50 {
        assert!(
            std::time::Instant::now() < flowing,
            "{answers} answers while records flowed"
        );
        for k in 0..KEYS {
            let key = format!("key-{k}");
            match query.get(&store, &key).await {
                Ok(Some(n)) => {
                    answers += 1;
                    let before = seen.insert(key.clone(), n).unwrap_or(0);
                    assert!(n >= before, "{key} went back from {before} to {n}");
                    assert!(n <= 8_000, "{key}: {n} is more than was produced");
                }
                Ok(None) | Err(QueryError::NotReady { .. }) => {}
                Err(e) => panic!("{key}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (k, n) in producing.await.unwrap() {
        *expected.entry(k).or_default() += n;
    }
    // Once handled and flushed: exact.
    let exact = |query: kafka_stateful::StateQuery, expected: HashMap<String, u64>| async move {
        for (key, want) in &expected {
            if query.get(&common::counts_store(), key).await.ok().flatten() != Some(*want) {
                return false;
            }
        }
        true
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !exact(query.clone(), expected.clone()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "queries never matched the produced counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(query.partitions().len(), PARTITIONS as usize);
    running.stop().await.unwrap();
    // Stopped: nothing is owned here any more.
    assert!(matches!(
        query.get(&store, &"key-0".to_string()).await,
        Err(QueryError::NotOwned { .. })
    ));

    // Restarted with the local state deleted: it restores from the changelog; meanwhile a
    // query says "not ready" or "not owned", never a partial count.
    std::fs::remove_dir_all(dir.path().join(&group)).unwrap();
    let consumer = StatefulConsumer::new(
        config(&topic, &group, "q-0", dir.path()),
        Utf8,
        Utf8,
        Counter::default(),
    );
    let query = consumer.query();
    let running = Running::start(consumer);
    let (mut not_ready, mut right) = (0, 0);
    let restarted = std::time::Instant::now() + Duration::from_secs(60);
    while right < KEYS {
        right = 0;
        for (key, want) in &expected {
            match query.get(&store, key).await {
                Ok(got) => {
                    assert_eq!(got, Some(*want), "{key} after the restart");
                    right += 1;
                }
                Err(QueryError::NotReady { .. } | QueryError::NotOwned { .. }) => not_ready += 1,
                Err(e) => panic!("{key}: {e}"),
            }
        }
        assert!(std::time::Instant::now() < restarted, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("after the restart: {not_ready} answers were 'not ready / not owned yet'");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_another_member_owns_is_not_owned_and_names_that_member() {
    require_broker!();
    let topic = common::unique("query-two");
    let group = common::unique("query-two-group");
    common::create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut expected = HashMap::new();
    produce_keyed(&topic, 400, &mut expected).await;
    let a = StatefulConsumer::new(
        config(&topic, &group, "qa", &dir.path().join("a")),
        Utf8,
        Utf8,
        Counter::default(),
    );
    let b = StatefulConsumer::new(
        config(&topic, &group, "qb", &dir.path().join("b")),
        Utf8,
        Utf8,
        Counter::default(),
    );
    let (query_a, query_b) = (a.query(), b.query());
    let (a, b) = (Running::start(a), Running::start(b));
    common::wait_until(
        "both members own partitions",
        Duration::from_secs(60),
        || {
            let (pa, pb) = (query_a.partitions(), query_b.partitions());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS as usize
        },
    )
    .await;
    let store = common::counts_store();
    // A key of a partition b owns, asked of a.
    let owned_by_b: Vec<i32> = query_b.partitions().iter().map(|(_, p, _)| *p).collect();
    let key = (0..KEYS)
        .map(|k| format!("key-{k}"))
        .find(|k| {
            let p = kafka_stateful::query::Partitioner::Crc32.partition(k.as_bytes(), PARTITIONS);
            owned_by_b.contains(&p)
        })
        .expect("some key lands on b");
    let mut answer = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match query_a.get(&store, &key).await {
            Err(QueryError::NotOwned {
                owner: Some(owner), ..
            }) => {
                answer = Some(owner);
                break;
            }
            Err(QueryError::NotOwned { owner: None, .. }) => {}
            other => panic!("a answered for b's key {key}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.as_deref(), Some("qb"), "the owner of {key}");
    // And b answers it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(n)) = query_b.get(&store, &key).await {
            if n == expected[&key] {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never answered {key} exactly"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// `GET path` on `addr`, HTTP/1.1: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unique_visitors_example_serves_its_counts_over_http_while_running_and_after_a_restart()
{
    require_broker!();
    let topic = common::unique("query-views");
    let group = common::unique("query-views-group");
    common::create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    // 30 views of one page by 3 users, in one minute, far from its end.
    let now = common::now_ms() as i64;
    let minute = now / 60_000 * 60_000;
    let producer = common::producer_at(&common::bootstrap());
    for i in 0..30 {
        let view = job::View {
            page: "page-7".into(),
            user: format!("user-{}", i % 3),
            ts: minute + 1_000 + i,
        };
        let value = serde_json::to_string(&view).unwrap();
        producer
            .send_result(FutureRecord::to(&topic).key("page-7").payload(&value))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    let start = |dir: &Path| {
        let handler = job::UniqueVisitors::new(&format!("{topic}-out"));
        let counts = handler.counts.clone();
        let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
            .instance_id("views-0")
            .flush_interval(Duration::from_millis(100))
            .state_dir(dir)
            .window(&handler.members)
            .window(&handler.counts)
            .build()
            .unwrap();
        let consumer = StatefulConsumer::new(config, Utf8, Json::<job::View>::new(), handler);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let query = consumer.query();
        let run = tokio::spawn(consumer.run(async move {
            let _ = stopped.await;
        }));
        (query, counts, (stop, run))
    };
    for round in 0..2 {
        let (query, counts, running) = start(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(http::serve(listener, query, counts));
        let want = format!("\"window_start\":{minute}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let body = loop {
            let (status, body) = http_get(addr, "/pages/page-7").await;
            assert!(
                [200, 503, 421].contains(&status),
                "round {round}: {status} {body}"
            );
            if status == 200 && body.contains("\"views\":30") {
                break body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: last answer {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(body.contains(&want), "{body}");
        assert!(body.contains("\"unique_visitors\":3"), "{body}");
        let (status, body) = http_get(addr, "/partitions").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"ready\":true"), "{body}");
        server.abort();
        let (stop, run) = running;
        let _ = stop.send(());
        run.await.unwrap().unwrap();
    }
}
