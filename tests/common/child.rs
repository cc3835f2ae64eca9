//! Shared by the tests that run consumers in child processes (`crash.rs`, `chaos.rs`,
//! `zombie.rs`): the test binary re-run as a child that executes one of its own tests, the
//! child's probe file and stderr log, signals to it, and the configuration of the
//! [`CountSum`](super::common::CountSum) consumer those children (and the test process)
//! run. Included with `#[path]` by those tests only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::{self, KillOnDrop, Probe};
use kafka_stateful::{ConsumerConfig, ConsumerConfigBuilder};

/// A test of this binary that is a child process's body: run on its own (`--exact name`)
/// with `var` set to the child's arguments, it runs a consumer until it is killed; without
/// `var` it does nothing, and the scenario tests of the binary do nothing in a child.
pub struct ChildTest {
    /// The test's function name.
    pub name: &'static str,
    /// The environment variable carrying the child's `|`-separated arguments, the last
    /// one its probe file (appended by [`ChildTest::spawn`]).
    pub var: &'static str,
}

impl ChildTest {
    /// `true` in a child process, where the binary's scenario tests must not run (a guard:
    /// a child is started with `--exact`, so only its body test runs).
    pub fn in_child(&self) -> bool {
        std::env::var(self.var).is_ok()
    }

    /// In a child: the `N` arguments given to [`ChildTest::spawn`] and the opened probe
    /// file; `None` in the test process.
    pub fn args<const N: usize>(&self) -> Option<([String; N], Arc<Probe>)> {
        let spec = std::env::var(self.var).ok()?;
        let mut fields: Vec<String> = spec.split('|').map(str::to_string).collect();
        let probe = fields.pop();
        match (<[String; N]>::try_from(fields), probe) {
            (Ok(args), Some(probe)) => Some((args, Probe::create(Path::new(&probe)))),
            _ => panic!(
                "bad {} {spec:?}: want {N} arguments and a probe path",
                self.var
            ),
        }
    }

    /// Starts the child named `name` with `args` (none may contain `|`): its probe is
    /// `dir/probe-<name>.log`, its stderr `dir/child-<name>.stderr` (kept with the
    /// directory by `KS_KEEP_DIR=1`), its stdout dropped.
    pub fn spawn(&self, dir: &Path, name: &str, args: &[&str]) -> Child {
        let probe = dir.join(format!("probe-{name}.log"));
        let stderr = dir.join(format!("child-{name}.stderr"));
        let mut spec = args.join("|");
        spec.push('|');
        spec.push_str(&probe.display().to_string());
        let process = Command::new(common::self_exe())
            .args(["--exact", self.name, "--nocapture", "--test-threads=1"])
            .env(self.var, spec)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Child {
            process: KillOnDrop(Some(process)),
            probe,
            stderr,
            started: Instant::now(),
        }
    }
}

/// A running child process (SIGKILLed when dropped) with its probe file and stderr log.
pub struct Child {
    pub process: KillOnDrop,
    pub probe: PathBuf,
    pub stderr: PathBuf,
    /// When it was spawned.
    pub started: Instant,
}

impl Child {
    /// Panics, with the end of its stderr, when the child exited by itself (it runs until
    /// killed, so it crashed). `who` names it in the message.
    pub fn assert_alive(&mut self, who: &str) {
        assert!(
            self.process.alive(),
            "{who} exited by itself:\n{}",
            self.stderr_tail()
        );
    }

    /// The last 30 lines of its stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1).
    pub fn signal(&mut self, signal: &str) {
        let pid = self.process.child().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// `true` once SIGSTOP took effect: `State:` in `/proc/<pid>/status` is `T (stopped)`.
    pub fn stopped(&mut self) -> bool {
        let pid = self.process.child().id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .unwrap_or("")
            .trim()
            .starts_with('T')
    }
}

/// The [`CountSum`](super::common::CountSum) consumer (its `counts` and `sums` stores and
/// its `weights` table) of
/// the child-process tests, the same in a child and in the test process: static member
/// `instance` of `group` with the state directory `dir`. Each test adds its flush and
/// commit cadence.
pub fn count_sum_config(
    topic: &str,
    group: &str,
    instance: &str,
    dir: &str,
) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id(instance)
        .state_dir(dir)
        .store(&common::counts_store())
        .store(&common::sums_store())
        .table(&common::weights_table(topic))
}

/// [`count_sum_config`] for a group whose members die or freeze at any moment: a member
/// that stops answering leaves after `session_timeout`, and a rebalance that waits for one
/// (it died or froze during the rebalance) or a revoke's hooks and flush cannot hang.
pub fn group_member_config(
    topic: &str,
    group: &str,
    instance: &str,
    dir: &str,
    session_timeout: Duration,
) -> ConsumerConfigBuilder {
    count_sum_config(topic, group, instance, dir)
        .session_timeout(session_timeout)
        .max_poll_interval(Duration::from_secs(20))
        .revoke_timeout(Duration::from_secs(5))
        .flush_timeout(Duration::from_secs(5))
}
