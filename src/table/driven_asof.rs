//! Versioned tables through the broker-free test driver: a backlog read after the table's
//! later versions, replays after a crash and a lost disk, the history horizon, and pruning.

use std::time::Duration;

use crate::codec::{Bincode, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::{
    ConsumerConfig, ErrorPolicy, Handler, HandlerError, PartitionContext, Record, StoreDef,
};

use super::{TableDef, TableError};

/// Orders keyed by customer id, value = order id; stores, per order id, the customer name
/// the order read as of its time ("-" for none) and the latest name ("now").
#[derive(Clone)]
struct AsOfEnrich {
    customers: TableDef<String, String>,
    seen: StoreDef<String, (String, String)>,
}

impl Handler<String, String> for AsOfEnrich {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let customer = r.key.ok_or("no key")?;
        let order = r.value.ok_or("no value")?;
        let table = ctx.table(&self.customers)?;
        let then = table
            .at_record_time(&customer)?
            .unwrap_or_else(|| "-".into());
        let now = table.get(&customer)?.unwrap_or_else(|| "-".into());
        ctx.store(&self.seen)?.put(&order, &(then, now))?;
        Ok(())
    }
}

fn customers(history: Duration) -> TableDef<String, String> {
    TableDef::new("customers", "customers", Utf8, Utf8).versioned(history)
}

fn seen_def() -> StoreDef<String, (String, String)> {
    StoreDef::new("seen", Utf8, Bincode::new())
}

async fn driver(history: Duration) -> TestDriver<Utf8, Utf8, AsOfEnrich> {
    let (customers, seen) = (customers(history), seen_def());
    let config = ConsumerConfig::builder("unused:9092", "g", ["orders"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .store(&seen)
        .table(&customers)
        .error_policy(ErrorPolicy::Fail)
        .build()
        .unwrap();
    TestDriver::new(config, Utf8, Utf8, AsOfEnrich { customers, seen })
        .await
        .unwrap()
}

fn customer(id: &str, name: Option<&str>, ts: i64) -> TestRecord<String, String> {
    match name {
        Some(name) => TestRecord::new(id.to_string(), name.to_string()).timestamp(ts),
        None => TestRecord::tombstone(id.to_string()).timestamp(ts),
    }
}

fn order(id: &str, ts: i64) -> TestRecord<String, String> {
    TestRecord::new("c1".to_string(), id.to_string()).timestamp(ts)
}

/// Order id → the name it read as of its time.
async fn read_then(d: &mut TestDriver<Utf8, Utf8, AsOfEnrich>) -> Vec<(String, String)> {
    let seen = d.read(&seen_def()).await.unwrap();
    seen.into_iter()
        .map(|(order, (then, _))| (order, then))
        .collect()
}

/// A table store of `spec` alone in `dir`, with a read cache.
fn open_store(dir: &std::path::Path, spec: super::TableSpec) -> super::TableStore {
    super::TableStore::open(dir, &[spec], Duration::ZERO, &Default::default(), 1 << 20).unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_read_after_the_bootstrap_joins_each_order_with_its_own_version() {
    let mut d = driver(DAY).await;
    let table = customers(DAY);
    for (name, ts) in [
        (Some("Ada"), 100),
        (Some("Grace"), 300),
        (None, 500),
        (Some("Lin"), 700),
    ] {
        d.pipe_table(&table, customer("c1", name, ts)).unwrap();
    }
    // The restart reads the whole table topic first: every version is there before the
    // backlog, as when a member starts behind.
    d.lose_disk().await.unwrap();
    for (id, ts) in [
        ("o1", 50),
        ("o2", 150),
        ("o3", 300),
        ("o4", 550),
        ("o5", 800),
    ] {
        d.send(order(id, ts)).await.unwrap();
    }
    assert_eq!(
        read_then(&mut d).await,
        pairs(&[
            ("o1", "-"),
            ("o2", "Ada"),
            ("o3", "Grace"),
            ("o4", "-"),
            ("o5", "Lin")
        ])
    );
    // `get` reads "now": the newest applied version, for every order.
    let now: Vec<String> = d
        .read(&seen_def())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, (_, now))| now)
        .collect();
    assert_eq!(now, vec!["Lin"; 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_after_a_crash_and_a_lost_disk_read_what_the_first_handling_read() {
    let mut d = driver(DAY).await;
    let table = customers(DAY);
    d.pipe_table(&table, customer("c1", Some("Ada"), 100))
        .unwrap();
    d.send(order("o1", 200)).await.unwrap();
    d.pipe_table(&table, customer("c1", Some("Grace"), 300))
        .unwrap();
    d.send(order("o2", 250)).await.unwrap();
    d.send(order("o3", 350)).await.unwrap();
    let first = read_then(&mut d).await;
    assert_eq!(
        first,
        pairs(&[("o1", "Ada"), ("o2", "Ada"), ("o3", "Grace")])
    );
    // Handled again from the start with the whole table read first: the same answers.
    d.lose_disk().await.unwrap();
    d.pipe_table(&table, customer("c1", Some("Lin"), 900))
        .unwrap();
    for (id, ts) in [("o1", 200), ("o2", 250), ("o3", 350)] {
        d.send(order(id, ts)).await.unwrap();
    }
    assert_eq!(read_then(&mut d).await, first);
    d.crash().await.unwrap();
    d.send(order("o2", 250)).await.unwrap();
    assert_eq!(read_then(&mut d).await, first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_older_than_the_history_fails_instead_of_answering_from_pruned_versions() {
    let history = Duration::from_millis(100);
    let mut d = driver(history).await;
    let table = customers(history);
    for (name, ts) in [("Ada", 100), ("Grace", 300), ("Lin", 1000)] {
        d.pipe_table(&table, customer("c1", Some(name), ts))
            .unwrap();
    }
    d.lose_disk().await.unwrap();
    // At the horizon (1000 - 100): Grace, kept because it answers there.
    d.send(order("o1", 900)).await.unwrap();
    assert_eq!(read_then(&mut d).await, pairs(&[("o1", "Grace")]));
    let error = d.send(order("o2", 899)).await.unwrap_err().to_string();
    assert!(error.contains("older than the history"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unversioned_table_says_so_and_a_global_table_cannot_be_versioned() {
    let plain: TableDef<String, String> = TableDef::new("customers", "customers", Utf8, Utf8);
    let reads = super::TableReads::default();
    assert!(matches!(
        super::Table::open(&plain, &reads, Some(1)).map(|_| ()),
        Err(TableError::Unknown(_))
    ));
    let error = ConsumerConfig::builder("unused:9092", "g", ["orders"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .global_table(&customers(DAY))
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("versioned"), "{error}");
}

#[test]
fn versions_are_pruned_to_the_history_as_keys_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let def = customers(Duration::from_millis(100));
    let spec = def.spec(false);
    let store = open_store(dir.path(), spec.clone());
    let entry = |key: &'static [u8], value: Option<&'static [u8]>, time| super::store::Entry {
        key,
        value,
        time,
    };
    store
        .write(
            0,
            0,
            &[
                entry(b"a", Some(b"1"), 10),
                entry(b"a", Some(b"2"), 50),
                entry(b"b", Some(b"x"), 60),
            ],
            3,
            true,
        )
        .unwrap();
    // Same time twice in one batch: the later record wins.
    store
        .write(
            0,
            0,
            &[entry(b"a", Some(b"3"), 120), entry(b"a", Some(b"3'"), 120)],
            5,
            true,
        )
        .unwrap();
    // Horizon 20: 10 still answers from 20 to 50, so nothing is pruned yet.
    assert_eq!(
        store.versions_of(0, b"a").unwrap(),
        vec![
            (10, Some(b"1".to_vec())),
            (50, Some(b"2".to_vec())),
            (120, Some(b"3'".to_vec()))
        ]
    );
    // A tombstone at 150 (horizon 50: 10 goes), then a value at 300 (horizon 200: the
    // tombstone at 150 answers "absent" there, so it goes with everything before it).
    store
        .write(0, 0, &[entry(b"a", None, 150)], 6, true)
        .unwrap();
    store
        .write(0, 0, &[entry(b"a", Some(b"4"), 300)], 7, true)
        .unwrap();
    assert_eq!(
        store.versions_of(0, b"a").unwrap(),
        vec![(300, Some(b"4".to_vec()))]
    );
    // Key b was not written again: its version stays.
    assert_eq!(
        store.versions_of(0, b"b").unwrap(),
        vec![(60, Some(b"x".to_vec()))]
    );
    assert_eq!(store.checkpoint(0, 0).unwrap(), 7);
    // Reopened: the horizon is remembered.
    drop(store);
    let store = open_store(dir.path(), spec);
    assert!(matches!(
        store.as_of_with(0, b"b", 150, |v| v.to_vec()).unwrap(),
        super::store::AsOf::TooOld { oldest: 200 }
    ));
    assert!(matches!(
        store.as_of_with(0, b"b", 250, |v| v.to_vec()).unwrap(),
        super::store::AsOf::Found(Some(v)) if v == b"x"
    ));
}

#[test]
fn the_head_answers_newer_lookups_and_an_out_of_order_version_is_found_by_seeking() {
    let dir = tempfile::tempdir().unwrap();
    let spec = customers(DAY).spec(false);
    let store = open_store(dir.path(), spec);
    let entry = |value: &'static [u8], time| super::store::Entry {
        key: b"a",
        value: Some(value),
        time,
    };
    store.write(0, 0, &[entry(b"x", 100)], 1, true).unwrap();
    // Older than the newest: the head stays at 100.
    store.write(0, 0, &[entry(b"y", 50)], 2, true).unwrap();
    let read = |t| match store.as_of_with(0, b"a", t, <[u8]>::to_vec).unwrap() {
        super::store::AsOf::Found(v) => v,
        _ => panic!("not found"),
    };
    assert_eq!(read(150), Some(b"x".to_vec()));
    assert_eq!(read(100), Some(b"x".to_vec()));
    assert_eq!(read(75), Some(b"y".to_vec()));
    assert_eq!(read(10), None);
    assert!(matches!(
        store.as_of_with(0, b"other", 150, <[u8]>::to_vec).unwrap(),
        super::store::AsOf::Found(None)
    ));
}

#[test]
fn a_table_made_versioned_is_read_again_from_its_topic() {
    let dir = tempfile::tempdir().unwrap();
    let plain: TableDef<String, String> = TableDef::new("customers", "customers", Utf8, Utf8);
    let open = |spec: super::TableSpec| open_store(dir.path(), spec);
    let store = open(plain.spec(false));
    let entry = super::store::Entry {
        key: b"a",
        value: Some(b"x"),
        time: 5,
    };
    store.write(0, 0, &[entry], 1, true).unwrap();
    assert_eq!(store.checkpoint(0, 0).unwrap(), 1);
    drop(store);
    // Its latest values are kept another way now: the local copy starts over.
    let store = open(customers(DAY).spec(false));
    assert_eq!(store.checkpoint(0, 0).unwrap(), 0);
    assert!(store.entries(0).unwrap().is_empty());
    store.write(0, 0, &[entry], 1, true).unwrap();
    assert_eq!(
        store.entries(0).unwrap(),
        vec![(b"a".to_vec(), b"x".to_vec())]
    );
}

#[test]
fn versions_appended_in_time_order_skip_the_history_read_and_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let spec = customers(Duration::from_millis(100)).spec(false);
    let open = || open_store(dir.path(), spec.clone());
    let entry = |value: &'static [u8], time| super::store::Entry {
        key: b"a",
        value: Some(value),
        time,
    };
    let versions = |store: &super::TableStore| -> Vec<(i64, Vec<u8>)> {
        let all = store.versions_of(0, b"a").unwrap();
        all.into_iter().map(|(t, v)| (t, v.unwrap())).collect()
    };
    let store = open();
    // Appended (no read of the history): 50 after 10, within the retention.
    store.write(0, 0, &[entry(b"1", 10)], 1, true).unwrap();
    store.write(0, 0, &[entry(b"2", 50)], 2, true).unwrap();
    // Out of order, then the same time again: these read the history.
    store.write(0, 0, &[entry(b"3", 30)], 3, true).unwrap();
    store.write(0, 0, &[entry(b"2'", 50)], 4, true).unwrap();
    let v = |t, s: &[u8]| (t, s.to_vec());
    assert_eq!(
        versions(&store),
        vec![v(10, b"1"), v(30, b"3"), v(50, b"2'")]
    );
    // Reopened, the bound on the oldest version is remembered: 60 is appended.
    drop(store);
    let store = open();
    store.write(0, 0, &[entry(b"4", 60)], 5, true).unwrap();
    assert_eq!(
        versions(&store),
        vec![v(10, b"1"), v(30, b"3"), v(50, b"2'"), v(60, b"4")]
    );
    // 200 moves the horizon to 100, past the oldest version: the history is read and
    // pruned (60 is the newest version before the horizon and stays).
    store.write(0, 0, &[entry(b"5", 200)], 6, true).unwrap();
    assert_eq!(versions(&store), vec![v(60, b"4"), v(200, b"5")]);
    assert!(matches!(
        store.as_of_with(0, b"a", 150, |v| v.to_vec()).unwrap(),
        super::store::AsOf::Found(Some(found)) if found == b"4"
    ));
}
