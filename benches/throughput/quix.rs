//! The same count-per-key job in Quix Streams (`BENCH_QUIX=<python>`), for comparison.

use super::measure::Figure;

/// The count-per-key job in Quix Streams, when `BENCH_QUIX` names a Python that has it.
pub fn quix(bootstrap: &str, topic: &str, n: u64, name: &str, raw: &Figure) {
    let Ok(python) = std::env::var("BENCH_QUIX") else {
        println!("{{\"bench\":\"{name}\",\"skipped\":\"set BENCH_QUIX to a python with benches/requirements-quix.txt\"}}");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/quix_count.py");
    let output = std::process::Command::new(python)
        .args([script, "--brokers", bootstrap, "--topic", topic])
        .args(["--records", &n.to_string(), "--name", name])
        .stderr(std::process::Stdio::inherit())
        .output();
    let line = output
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().last().map(str::to_string));
    let Some(line) = line else {
        println!("{{\"bench\":\"{name}\",\"skipped\":\"quix_count.py failed\"}}");
        return;
    };
    let field = |key: &str| -> f64 {
        line.split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (rate, cpu) = (field("records_per_s"), field("cpu_us_per_record"));
    println!(
        "{{\"bench\":\"{name}\",\"records\":{},\"records_per_s\":{rate:.0},\"cpu_us_per_record\":{cpu:.3},\"rate_ratio_to_raw\":{:.3},\"cpu_ratio_to_raw\":{:.3},\"peak_rss_mb\":{:.0}}}",
        field("records"), rate / raw.rate(), cpu / raw.cpu_us(), field("peak_rss_mb")
    );
}
