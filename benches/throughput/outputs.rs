//! What sending costs: count per key alone, with one output record per input produced while
//! handling goes on (at-least-once), and the same exactly-once (one transaction per commit
//! interval). All on the broker with transactions (`$KAFKA_TXN_BOOTSTRAP`, default
//! 127.0.0.1:9094; `scripts/txn-broker.sh` starts tansu there), the raw consumer included,
//! so every ratio compares runs on one broker. Besides each figure's line, one line gives
//! the ratios of the medians: outputs ÷ no outputs, exactly-once ÷ at-least-once.

use kafka_stateful::ProcessingGuarantee;

use super::count::stateful;
use super::measure::{raw, runs, Samples};
use super::topics::{create_topic, env_u64, fill};
use super::Bench;

pub async fn outputs(b: &Bench) {
    let bootstrap =
        std::env::var("KAFKA_TXN_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".into());
    let n = env_u64("BENCH_OUTPUT_RECORDS", 300_000);
    let topic = b.topic("outputs");
    let out = format!("{topic}-out");
    fill(&bootstrap, &topic, 4, n, 1_000, 100).await;
    create_topic(&bootstrap, &out, 4).await;
    let jobs: [(&str, Option<&str>, ProcessingGuarantee); 3] = [
        ("count_1k_keys", None, ProcessingGuarantee::AtLeastOnce),
        (
            "count_and_output_at_least_once",
            Some(&out),
            ProcessingGuarantee::AtLeastOnce,
        ),
        (
            "count_and_output_exactly_once",
            Some(&out),
            ProcessingGuarantee::ExactlyOnce,
        ),
    ];
    let mut samples: Vec<Samples> = jobs.iter().map(|_| Samples::default()).collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    for _ in 0..runs() {
        let raw_run = raw(&bootstrap, &topic, n).await;
        for (i, (name, output, guarantee)) in jobs.iter().enumerate() {
            let (group, dir) = b.fresh(name);
            let mut job = b.job(&topic, group, &dir, 1);
            job.bootstrap = &bootstrap;
            job.output = *output;
            job.guarantee = *guarantee;
            let run = stateful(&job, n).await;
            rates[i].push(run.figure.rate());
            samples[i].push(raw_run, run.figure);
        }
    }
    for ((name, _, _), s) in jobs.iter().zip(&samples) {
        s.print(&format!("kafka_stateful_{name}_txn_broker"), "");
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, alo, eos) = (median(&rates[0]), median(&rates[1]), median(&rates[2]));
    println!(
        "{{\"bench\":\"kafka_stateful_output_ratios\",\"outputs_vs_none\":{:.3},\
\"exactly_once_vs_at_least_once\":{:.3}}}",
        alo / plain,
        eos / alo
    );
}
