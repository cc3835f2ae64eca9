use super::close::parse_close_key;
use super::*;
use crate::codec::{Bincode, Utf8};

fn tumbling() -> WindowDef<String, u64> {
    WindowDef::tumbling(
        "w",
        Duration::from_secs(60),
        Duration::from_secs(10),
        Utf8,
        Bincode::new(),
    )
}

#[test]
fn tumbling_and_hopping_windows_contain_the_right_times() {
    let t = tumbling();
    assert_eq!(
        t.windows_of(61_000),
        vec![Window {
            start: 60_000,
            end: 120_000
        }]
    );
    assert_eq!(t.windows_of(-1)[0].start, -60_000, "negative times too");
    let h: WindowDef<String, u64> = WindowDef::hopping(
        "h",
        Duration::from_secs(60),
        Duration::from_secs(20),
        Duration::ZERO,
        Utf8,
        Bincode::new(),
    );
    let starts: Vec<i64> = h.windows_of(65_000).iter().map(|w| w.start).collect();
    assert_eq!(starts, vec![20_000, 40_000, 60_000]);
    assert!(h
        .windows_of(65_000)
        .iter()
        .all(|w| w.start <= 65_000 && 65_000 < w.end));
}

#[test]
fn a_window_closes_at_its_end_plus_grace() {
    let t = tumbling();
    let w = t.windows_of(0)[0];
    assert!(!t.is_closed(w, 69_999));
    assert!(t.is_closed(w, 70_000));
}

#[test]
fn store_keys_order_by_window_start_and_close_keys_round_trip() {
    let t = tumbling();
    let early = t.encode_key(t.windows_of(-1)[0], &"z".to_string()).unwrap();
    let late = t.encode_key(t.windows_of(1)[0], &"a".to_string()).unwrap();
    assert!(early < late);
    assert_eq!(
        parse_close_key(&close_key("views", &start_prefix(-60_000))),
        Some(("views", &start_prefix(-60_000)[..]))
    );
}
