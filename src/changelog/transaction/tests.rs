//! The coordinator with a fake client: what commits, what aborts, who waits.

use std::sync::Mutex;

use super::*;

/// Records the calls; fails `commit` when told to.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail_commit: std::sync::atomic::AtomicBool,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn push(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl TxnClient for Fake {
    fn begin(&self) -> Result<(), TxnError> {
        self.push("begin".into());
        Ok(())
    }
    fn send_offsets(&self, offsets: &[(String, i32, i64)]) -> Result<(), TxnError> {
        self.push(format!("offsets {offsets:?}"));
        Ok(())
    }
    fn commit(&self) -> Result<(), TxnError> {
        self.push("commit".into());
        match self.fail_commit.load(Ordering::Relaxed) {
            true => Err(TxnError {
                message: "fenced".into(),
                retriable: false,
            }),
            false => Ok(()),
        }
    }
    fn abort(&self) -> Result<(), TxnError> {
        self.push("abort".into());
        Ok(())
    }
}

fn started(fake: &Arc<Fake>) -> (Arc<Transactions>, Coordinator, Arc<Mutex<Vec<String>>>) {
    let txn = Arc::new(Transactions::new(fake.clone(), Duration::from_secs(3600)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let heard = failures.clone();
    let coordinator = txn
        .start(move |failed| heard.lock().unwrap().push(failed.0.to_string()))
        .unwrap();
    (txn, coordinator, failures)
}

#[tokio::test]
async fn a_finished_unit_commits_with_its_offsets_and_its_waiter_hears_it() {
    let fake = Arc::new(Fake::default());
    let (txn, coordinator, failures) = started(&fake);
    let progress = Arc::new(PartitionProgress::default());
    let unit = txn.enter().await.unwrap();
    unit.register("t", 3, 40, progress.clone());
    unit.register("t", 3, 42, progress.clone());
    let seq = unit.finish();
    txn.commit_soon();
    tokio::time::timeout(Duration::from_secs(10), txn.committed(seq))
        .await
        .expect("committed in time")
        .unwrap();
    assert_eq!(
        fake.calls(),
        ["begin", "offsets [(\"t\", 3, 42)]", "commit", "begin"]
    );
    assert_eq!(progress.committed_next.load(Ordering::Relaxed), 42);
    assert_eq!(txn.counts(), (1, 0));
    // The next unit is in the next transaction.
    let unit = txn.enter().await.unwrap();
    assert_eq!(unit.finish(), seq + 1);
    coordinator.stop();
    assert!(failures.lock().unwrap().is_empty());
    assert_eq!(txn.counts(), (2, 0), "stopping commits what was entered");
}

#[tokio::test]
async fn a_unit_dropped_before_it_finished_aborts_and_every_waiter_fails() {
    let fake = Arc::new(Fake::default());
    let (txn, _coordinator, failures) = started(&fake);
    let finished = txn.enter().await.unwrap();
    let seq = finished.finish();
    let cut = txn.enter().await.unwrap();
    drop(cut); // a worker aborted mid-flush
    let outcome = tokio::time::timeout(Duration::from_secs(10), txn.committed(seq))
        .await
        .expect("an outcome in time");
    assert!(outcome.unwrap_err().0.contains("cut off"));
    assert_eq!(fake.calls(), ["begin", "abort"], "nothing was committed");
    assert_eq!(failures.lock().unwrap().len(), 1);
    assert!(txn.enter().await.is_err(), "no unit enters after an abort");
    assert_eq!(txn.counts(), (0, 1));
}

#[tokio::test]
async fn a_commit_the_broker_refuses_is_aborted_and_ends_the_transactions() {
    let fake = Arc::new(Fake::default());
    fake.fail_commit.store(true, Ordering::Relaxed);
    let (txn, _coordinator, failures) = started(&fake);
    let unit = txn.enter().await.unwrap();
    unit.register("t", 0, 7, Arc::default());
    let seq = unit.finish();
    txn.commit_soon();
    let outcome = tokio::time::timeout(Duration::from_secs(10), txn.committed(seq))
        .await
        .expect("an outcome in time");
    assert!(outcome.unwrap_err().0.contains("fenced"));
    assert_eq!(
        fake.calls(),
        ["begin", "offsets [(\"t\", 0, 7)]", "commit", "abort"]
    );
    assert_eq!(failures.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_commit_waits_for_units_inside_and_lost_partitions_poison_it() {
    let fake = Arc::new(Fake::default());
    let (txn, _coordinator, _failures) = started(&fake);
    let inside = txn.enter().await.unwrap();
    txn.commit_soon();
    // The coordinator cannot take the gate while a unit is inside: nothing commits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.calls(), ["begin"]);
    txn.poison("partitions lost".into());
    let seq = inside.finish();
    let outcome = tokio::time::timeout(Duration::from_secs(10), txn.committed(seq))
        .await
        .expect("an outcome in time");
    assert!(outcome.unwrap_err().0.contains("partitions lost"));
    assert_eq!(fake.calls(), ["begin", "abort"]);
}

#[tokio::test]
async fn a_coordinator_that_did_not_run_for_longer_than_the_session_timeout_aborts() {
    let fake = Arc::new(Fake::default());
    let txn = Arc::new(
        Transactions::new(fake.clone(), Duration::from_millis(10))
            .unresponsive_after(Duration::from_millis(200)),
    );
    let heard = Arc::new(Mutex::new(Vec::new()));
    let failures = heard.clone();
    let _coordinator = txn
        .start(move |failed| failures.lock().unwrap().push(failed.0.to_string()))
        .unwrap();
    let within = Duration::from_secs(10);
    let seq = txn.enter().await.unwrap().finish();
    let first = tokio::time::timeout(within, txn.committed(seq)).await;
    assert!(first.expect("in time").is_ok(), "a turn on time commits");
    // The coordinator cannot take its next turn for 300 ms (as in a frozen process): it
    // waits for its turns with this lock. (Frozen again if the freeze happened to land
    // inside a turn, which is not a silence between turns.)
    let mut outcome = Ok(());
    for _ in 0..3 {
        let seq = txn.enter().await.unwrap().finish();
        {
            let _frozen = txn.lock();
            std::thread::sleep(Duration::from_millis(300));
        }
        outcome = tokio::time::timeout(within, txn.committed(seq))
            .await
            .expect("an outcome in time");
        if outcome.is_err() {
            break;
        }
    }
    let reason = outcome
        .expect_err("the work of a frozen member is aborted")
        .0;
    assert!(reason.contains("did not run for"), "{reason}");
    assert_eq!(fake.calls().last().map(String::as_str), Some("abort"));
    assert_eq!(heard.lock().unwrap().len(), 1);
}
