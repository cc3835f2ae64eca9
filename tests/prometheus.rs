//! The `prometheus` feature's scrape endpoint (run with `--features prometheus`), read by
//! hand and by a real Prometheus server (Debian's `prometheus` package) that scrapes it,
//! loads the shipped alert rules, and answers queries for the job's series.
#![cfg(feature = "prometheus")]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{require_broker, Recorder, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};

fn scrape(addr: std::net::SocketAddr) -> String {
    get(addr, "/metrics")
}

/// The response to `GET path` (headers included), empty when nothing answers.
fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server of the test's own, scraping `target` every second with the shipped
/// alert rules loaded; killed when dropped. `None` (skip) without the binary, unless
/// `REQUIRE_KAFKA=1`.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/prometheus/alerts.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: kafka-stateful\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let spawned = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn();
        match spawned {
            Ok(child) => Some(Self {
                child,
                addr,
                _dir: dir,
            }),
            Err(error) if std::env::var("REQUIRE_KAFKA").is_ok_and(|v| v == "1") => {
                panic!("REQUIRE_KAFKA=1 but prometheus cannot run ({error}); apt-get install prometheus")
            }
            Err(error) => {
                eprintln!("skipping the Prometheus server part: {error}");
                None
            }
        }
    }

    /// Prometheus' answer to `query` (`status` and `data`, or `error`).
    fn query(&self, query: &str) -> Option<serde_json::Value> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = get(self.addr, &format!("/api/v1/query?query={encoded}"));
        let body = response.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    }

    /// The value of the one series `query` returns, if it returns exactly one.
    fn value(&self, query: &str) -> Option<f64> {
        let json = self.query(query)?;
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    // A real Prometheus scrapes the job while it runs and answers for its series, with the
    // shipped alert rules loaded (none firing).
    if let Some(prometheus) = Prometheus::start(addr) {
        let selector = format!("{{job=\"kafka-stateful\",topic=\"{topic}\",partition=\"0\"}}");
        let handled = format!("kafka_stateful_records_handled_total{selector}");
        let lag = format!("kafka_stateful_consumer_lag_records{selector}");
        common::wait_until(
            "Prometheus answers 30 handled and lag 0 for the partition",
            Duration::from_secs(60),
            || prometheus.value(&handled) == Some(30.0) && prometheus.value(&lag) == Some(0.0),
        )
        .await;
        let rules = get(prometheus.addr, "/api/v1/rules");
        assert_eq!(rules.matches("\"type\":\"alerting\"").count(), 8, "{rules}");
        assert_eq!(
            prometheus.value("count(ALERTS{alertstate=\"firing\"})"),
            None,
            "nothing fires"
        );
    }
    running.stop().await.unwrap();
}
