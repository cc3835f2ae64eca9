//! The `prometheus` feature's scrape endpoint (run with `--features prometheus`).
#![cfg(feature = "prometheus")]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{require_broker, Recorder, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};

fn scrape(addr: std::net::SocketAddr) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_endpoint_serves_the_lag_per_partition() {
    require_broker!();
    common::init_tracing();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    kafka_stateful::observe::metrics::serve_prometheus(addr).unwrap();
    let (topic, group) = (common::unique("prom"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 30)).await;
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("prom-0")
        .commit_interval(Duration::from_millis(200))
        .stats_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(
        config,
        Utf8,
        Utf8,
        Recorder::default(),
    ));
    let line =
        format!("kafka_stateful_consumer_lag_records{{topic=\"{topic}\",partition=\"0\"}} 0");
    let handled =
        format!("kafka_stateful_records_handled_total{{topic=\"{topic}\",partition=\"0\"}} 30");
    common::wait_until(
        "the endpoint shows lag 0 and 30 handled",
        Duration::from_secs(60),
        || {
            let body = scrape(addr);
            body.contains(&line) && body.contains(&handled)
        },
    )
    .await;
    running.stop().await.unwrap();
}
