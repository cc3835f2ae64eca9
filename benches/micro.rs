//! Micro benchmarks without a broker: the pieces of the per-record and per-flush path, so a
//! regression shows in seconds (`cargo bench --features bench-internals --bench micro`).
//! The end-to-end figures, against a raw consumer, are `benches/throughput.rs`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_stateful::codec::{Bincode, Codec, Json, Utf8};
use kafka_stateful::state::bench::{sort_in_key_order, FlushBatchBench, OffsetBench, OverlayBench};

const KEYS: u64 = 200_000;

fn key(i: u64) -> Vec<u8> {
    format!("key-{}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS).into_bytes()
}

/// A record's state write (staged, committed) and a read, over 1 000 and 200 000 hot keys.
fn overlay(c: &mut Criterion) {
    let mut group = c.benchmark_group("overlay");
    group.throughput(Throughput::Elements(1));
    for keys in [1_000, KEYS] {
        let mut overlay = OverlayBench::default();
        let mut i = 0u64;
        group.bench_function(format!("update_{keys}_keys"), |b| {
            b.iter(|| {
                i += 1;
                overlay.update(&key(i % keys), &i.to_le_bytes());
            })
        });
        group.bench_function(format!("read_{keys}_keys"), |b| {
            b.iter(|| {
                i += 1;
                black_box(overlay.read(&key(i % keys)))
            })
        });
    }
    group.throughput(Throughput::Elements(KEYS));
    // A whole flush interval: 200 000 distinct keys written, then handed to a flush (the
    // overlay's maps are reused from one interval to the next).
    let mut overlay = OverlayBench::default();
    group.bench_function("interval_200000_keys", |b| {
        b.iter(|| {
            for i in 0..KEYS {
                overlay.update(&key(i), b"v");
            }
            black_box(overlay.flush())
        })
    });
    // The first interval of a partition: its maps grow from empty (a job working through a
    // backlog writes most of its keys before its first flush).
    group.bench_function("first_interval_200000_keys", |b| {
        b.iter(|| {
            let mut overlay = OverlayBench::default();
            for i in 0..KEYS {
                overlay.update(&key(i), b"v");
            }
            black_box(overlay.flush())
        })
    });
    group.bench_function("flush_handoff_200000_keys", |b| {
        b.iter_batched(
            || {
                let mut overlay = OverlayBench::default();
                for i in 0..KEYS {
                    overlay.update(&key(i), b"v");
                }
                overlay
            },
            |mut overlay| black_box(overlay.flush()),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn offsets(c: &mut Criterion) {
    let mut tracker = OffsetBench::default();
    let mut offset = 0;
    c.bench_function("offset_tracker_finish", |b| {
        b.iter(|| {
            offset += 1;
            black_box(tracker.finish(offset))
        })
    });
}

#[derive(serde::Serialize, serde::Deserialize)]
struct View {
    page: String,
    user: String,
    ts: i64,
}

fn codecs(c: &mut Criterion) {
    let view = View {
        page: "/product/42".into(),
        user: "user-31337".into(),
        ts: 1_795_645_860_000,
    };
    let json = Json::<View>::new();
    let bytes = json.encode(&view).unwrap();
    let mut group = c.benchmark_group("codec");
    group.bench_function("json_decode_view", |b| {
        b.iter(|| black_box(json.decode(black_box(&bytes)).unwrap()))
    });
    let count = Bincode::<(u64, u64)>::new();
    group.bench_function("bincode_encode_into_count", |b| {
        let mut out = Vec::with_capacity(32);
        b.iter(|| {
            out.clear();
            count.encode_into(black_box(&(12, 345)), &mut out).unwrap();
        })
    });
    group.bench_function("utf8_decode_key", |b| {
        b.iter(|| black_box(Utf8.decode(black_box(b"/product/42")).unwrap()))
    });
    group.finish();
}

/// One flush's RocksDB batch: 10 000 entries (and copying them into a map) and a
/// checkpoint, atomically.
fn flush_batch(c: &mut Criterion) {
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..10_000).map(|i| (key(i), vec![7; 8])).collect();
    let mut db = FlushBatchBench::default();
    let mut group = c.benchmark_group("flush_batch");
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.sample_size(20);
    group.bench_function("rocksdb_10000_entries", |b| b.iter(|| db.write(&entries)));
    group.finish();
}

/// A flush's sort into key order, 250 000 keys each allocated on its own (as the overlay
/// holds them) and in hash order: the unique-visitors job's window keys (window start, then
/// the bincode of page and user: long shared prefixes), and short distinct keys.
fn key_order(c: &mut Criterion) {
    let scramble = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let mut window_keys: Vec<Vec<u8>> = (0..250_000u64)
        .map(|i| {
            let r = scramble(i);
            let start = 1_700_000_000_000u64 / 60_000 * 60_000 + (r % 3) * 60_000;
            let mut key = start.to_be_bytes().to_vec();
            let page = format!("/product/{}", (r >> 8) % 1000);
            let user = format!("user-{}", i);
            Bincode::<(String, String)>::new()
                .encode_into(&(page, user), &mut key)
                .unwrap();
            key
        })
        .collect();
    window_keys.sort_by_key(|k| scramble(k.len() as u64 ^ u64::from(k[k.len() - 1])));
    let short_keys: Vec<Vec<u8>> = (0..250_000u64)
        .map(|i| format!("key-{}", scramble(i) % 10_000_000).into_bytes())
        .collect();
    let mut group = c.benchmark_group("key_order");
    group.throughput(Throughput::Elements(250_000));
    group.sample_size(20);
    group.bench_function("window_keys_250000", |b| {
        b.iter(|| sort_in_key_order(black_box(&window_keys)))
    });
    group.bench_function("short_keys_250000", |b| {
        b.iter(|| sort_in_key_order(black_box(&short_keys)))
    });
    group.finish();
}

criterion_group!(benches, overlay, offsets, codecs, flush_batch, key_order);
criterion_main!(benches);
