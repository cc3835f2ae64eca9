use super::*;

const NO_WAIT: Duration = Duration::ZERO;

fn spec(name: &str, format: &str) -> StoreSpec {
    StoreSpec {
        name: name.into(),
        format: format.into(),
        expiry: None,
    }
}

/// Opens without waiting for a lock, with the default shared memory.
fn open(path: &Path, specs: &[StoreSpec]) -> Result<PartitionDb, StateError> {
    PartitionDb::open(path, specs, NO_WAIT, &Default::default())
}

#[test]
fn batch_writes_data_and_checkpoint_together() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &[spec("counts", "f")]).unwrap();
    assert_eq!(db.checkpoint(0).unwrap(), StoreCheckpoint::EMPTY);
    let ck = StoreCheckpoint {
        changelog_next: 7,
        epoch: 3,
        seq: 2,
        source_next: 40,
        source_timestamp: 1_700_000_000_000,
        stream_time: 1_700_000_000_000,
        source_done: crate::state::checkpoint::DoneSet::from_ranges(vec![(42, 45)]),
        unsettled: true,
    };
    db.write(StateBatch {
        entries: vec![
            (0, b"a".to_vec(), Some(b"1".to_vec())),
            (0, b"b".to_vec(), None),
        ],
        checkpoints: vec![(0, ck.clone())],
    })
    .unwrap();
    drop(db);
    let db = open(dir.path(), &[spec("counts", "f")]).unwrap();
    assert_eq!(db.get(0, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.checkpoint(0).unwrap(), ck);
}

#[test]
fn second_open_is_a_lock_error_and_format_change_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &[spec("s", "v1")]).unwrap();
    let err = open(dir.path(), &[spec("s", "v1")]).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(db);
    let err = open(dir.path(), &[spec("s", "v2")]).unwrap_err();
    assert!(matches!(err, StateError::FormatMismatch { .. }), "{err}");
}

#[test]
fn a_database_still_open_in_this_process_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let held = open(dir.path(), &[spec("s", "f")]).unwrap();
    // An aborted worker closes its database a moment later.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
    });
    let db = PartitionDb::open(
        dir.path(),
        &[spec("s", "f")],
        Duration::from_secs(10),
        &Default::default(),
    );
    closer.join().unwrap();
    assert!(db.is_ok(), "{:?}", db.err());
}

#[test]
fn a_lock_of_another_process_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    // Opened outside PartitionDb: as another process would.
    let _other = DB::open_default(dir.path()).unwrap();
    let started = Instant::now();
    let err = PartitionDb::open(
        dir.path(),
        &[spec("s", "f")],
        Duration::from_secs(10),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_damaged_database_is_rebuilt_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &[spec("s", "f")]).unwrap();
    db.write(StateBatch {
        entries: vec![(0, b"a".to_vec(), Some(b"1".to_vec()))],
        checkpoints: vec![],
    })
    .unwrap();
    drop(db);
    // Corrupt every file RocksDB needs to open: the manifest and CURRENT.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("MANIFEST") || name == "CURRENT" {
            std::fs::write(&path, b"garbage, not a rocksdb file").unwrap();
        }
    }
    let db = open(dir.path(), &[spec("s", "f")]).unwrap();
    assert_eq!(db.get(0, b"a").unwrap(), None, "rebuilt empty");
    assert_eq!(db.checkpoint(0).unwrap(), StoreCheckpoint::EMPTY);
}

#[test]
fn prefix_scan_stops_at_prefix_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &[spec("s", "f")]).unwrap();
    let entries = ["a/1", "a/2", "b/1"]
        .iter()
        .map(|k| (0, k.as_bytes().to_vec(), Some(vec![1])))
        .collect();
    db.write(StateBatch {
        entries,
        checkpoints: vec![],
    })
    .unwrap();
    let keys: Vec<_> = db
        .prefix(0, b"a/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
}

#[test]
fn a_checkpoint_past_a_window_close_deletes_the_closed_windows_in_its_batch() {
    use crate::state::window_keys::start_prefix;
    let dir = tempfile::tempdir().unwrap();
    // Windows of 60 s closed 10 s after their end: [0, 60 s) closes at stream time 70 s.
    let specs = [
        spec(
            "w",
            "window;key=utf8;value=utf8;size=60000;advance=60000;grace=10000",
        ),
        spec("kv", "key=utf8;value=utf8"),
    ];
    let db = open(dir.path(), &specs).unwrap();
    let key = |start: i64, k: &str| [&start_prefix(start)[..], k.as_bytes()].concat();
    let at = |stream_time| StoreCheckpoint {
        stream_time,
        ..StoreCheckpoint::EMPTY
    };
    let entries = vec![
        (0, key(-60_000, "a"), Some(b"1".to_vec())),
        (0, key(0, "a"), Some(b"1".to_vec())),
        (0, key(60_000, "a"), Some(b"1".to_vec())),
        (1, key(0, "a"), Some(b"1".to_vec())),
    ];
    // Stream time 69.999 s: [0, 60 s) is still open, the window before it closed.
    db.write(StateBatch {
        entries: entries.clone(),
        checkpoints: vec![(0, at(69_999)), (1, at(69_999))],
    })
    .unwrap();
    assert_eq!(db.get(0, &key(-60_000, "a")).unwrap(), None);
    assert!(db.get(0, &key(0, "a")).unwrap().is_some());
    // A restored batch that rewrites closed windows' entries deletes them again, last.
    db.write_restored(
        0,
        entries[..3]
            .iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
            .iter(),
        at(70_000),
    )
    .unwrap();
    assert_eq!(db.get(0, &key(-60_000, "a")).unwrap(), None);
    assert_eq!(db.get(0, &key(0, "a")).unwrap(), None, "closed at 70 s");
    assert!(db.get(0, &key(60_000, "a")).unwrap().is_some(), "open");
    // Other stores are not windows: untouched.
    assert!(db.get(1, &key(0, "a")).unwrap().is_some());
}
