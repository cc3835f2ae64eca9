//! Shared by the crash and fault-injection tests (`crash.rs`, `chaos.rs`): a two-store
//! workload whose expected state can be computed independently, child processes that write
//! a probe file, and the classification of where a SIGKILL landed.
#![allow(dead_code, unreachable_pub)]

use super::*;

pub fn sums_store() -> StoreDef<String, u64> {
    StoreDef::new("sums", Utf8, Bincode::new())
}

/// Milliseconds since the Unix epoch: probe lines (child) and kill times (parent) share it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// splitmix64: kill delays, victims and keys come from a printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from `$var` when set, else from the clock; returns the seed too (print it).
    pub fn from_env_or_clock(var: &str) -> (Self, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Self(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Input for the two-store tests: every record's value is a number unique over the whole
/// run (`1, 2, 3, …`), its key `key-<k>` always lives in partition `k % partitions`, so the
/// expected count and sum of each key follow from the produced records alone.
pub struct Workload {
    pub partitions: i32,
    pub keys: usize,
    next: u64,
    rng: Rng,
    pub produced: Vec<(i32, String, String)>,
}

impl Workload {
    pub fn new(partitions: i32, keys: usize, seed: u64) -> Self {
        Self {
            partitions,
            keys,
            next: 1,
            rng: Rng(seed ^ 0x5EED),
            produced: Vec::new(),
        }
    }

    fn record(&mut self, k: usize) -> (i32, String, String) {
        let n = self.next;
        self.next += 1;
        let r = (
            (k % self.partitions as usize) as i32,
            format!("key-{k}"),
            n.to_string(),
        );
        self.produced.push(r.clone());
        r
    }

    /// `count` more records with pseudo-random keys (remembered in `produced`).
    pub fn batch(&mut self, count: usize) -> Vec<(i32, String, String)> {
        (0..count)
            .map(|_| {
                let k = self.rng.below(self.keys as u64) as usize;
                self.record(k)
            })
            .collect()
    }

    /// One more record for every key: a consumer handling them observes every key's state.
    pub fn one_per_key(&mut self) -> Vec<(i32, String, String)> {
        (0..self.keys).map(|k| self.record(k)).collect()
    }

    /// Independent computation: `key -> (count, sum of values)` over everything produced.
    pub fn expected(&self) -> HashMap<String, (u64, u64)> {
        let mut m: HashMap<String, (u64, u64)> = HashMap::new();
        for (_, k, v) in &self.produced {
            let e = m.entry(k.clone()).or_default();
            e.0 += 1;
            e.1 += v.parse::<u64>().unwrap();
        }
        m
    }
}

/// Compares a final consumer's view of the state with [`Workload::expected`]; returns one
/// line per wrong or missing key (empty when the state is exact).
pub fn state_mismatches(
    expected: &HashMap<String, (u64, u64)>,
    last: &HashMap<String, (u64, u64)>,
) -> Vec<String> {
    let mut out: Vec<String> = expected
        .iter()
        .filter(|(k, want)| last.get(*k) != Some(want))
        .map(|(k, (c, s))| {
            let got = last.get(k);
            let (gc, gs) = got.copied().unwrap_or((0, 0));
            format!(
                "{k}: count {gc} (want {c}, off by {}), sum {gs} (want {s}, off by {}){}",
                gc as i64 - *c as i64,
                gs as i64 - *s as i64,
                if got.is_none() { " [never seen]" } else { "" }
            )
        })
        .collect();
    out.sort();
    out
}

/// A line-per-event file a child process appends to: `<unix ms> <text>`. Each line is one
/// `write(2)` on an unbuffered `O_APPEND` file, so it survives a SIGKILL right after it.
pub struct Probe(Mutex<std::fs::File>);

impl Probe {
    pub fn create(path: &std::path::Path) -> Arc<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        Arc::new(Self(Mutex::new(file)))
    }

    pub fn line(&self, text: &str) {
        use std::io::Write;
        let line = format!("{} {}\n", now_ms(), text.replace('\n', " "));
        let _ = self.0.lock().unwrap().write_all(line.as_bytes());
    }
}

/// Every `PROBE_EVERY`-th source offset a [`CountSum`] handles is written to its probe.
pub const PROBE_EVERY: i64 = 50;

/// Counts records per key (`counts`) and sums their numeric values (`sums`); mirrors the
/// values it wrote per key in `last`, and writes probe lines when it has a probe. Reads
/// each record's key in the `weights` table (see [`Weights`]) and remembers the weight
/// in `weights_seen`; a record whose key has no weight fails.
#[derive(Clone)]
pub struct CountSum {
    pub counts: StoreDef<String, u64>,
    pub sums: StoreDef<String, u64>,
    pub weights: kafka_stateful::table::TableDef<String, String>,
    pub last: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    pub weights_seen: Arc<Mutex<HashMap<String, u64>>>,
    /// Sleeps `delay` on every record whose offset is a multiple of `delay_every`.
    pub delay: Option<Duration>,
    pub delay_every: i64,
    pub probe: Option<Arc<Probe>>,
    /// Sends `"<partition>:<offset>"` of every record to this output (see [`echo_topic`]).
    pub echo: Option<kafka_stateful::Output<String, String>>,
    /// Reads no weights table (a consumer configured without it).
    pub without_weights: bool,
}

/// The output topic a [`CountSum`] with `echo` sends to for the workload on `topic`.
pub fn echo_topic(topic: &str) -> String {
    format!("{topic}-echo")
}

impl CountSum {
    /// The handler of the workload on `topic` (its weights table reads `<topic>-weights`).
    pub fn new(topic: &str) -> Self {
        Self {
            counts: counts_store(),
            sums: sums_store(),
            weights: weights_table(topic),
            last: Arc::default(),
            weights_seen: Arc::default(),
            delay: None,
            delay_every: 1,
            probe: None,
            echo: None,
            without_weights: false,
        }
    }
}

impl Handler<String, String> for CountSum {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("record without key")?;
        let n: u64 = r.value.ok_or("record without value")?.parse()?;
        let weight: u64 = match self.without_weights {
            true => 0,
            false => {
                let weights = ctx.table(&self.weights)?;
                let weight = weights
                    .get(&key)?
                    .ok_or_else(|| format!("no weight for {key}: the table is incomplete"))?
                    .parse()?;
                // Every key's first weight is produced before any record: a version at the
                // record's time exists whatever was read, restored or replayed.
                weights
                    .at_record_time(&key)?
                    .ok_or_else(|| format!("no weight for {key} as of the record's time"))?
                    .parse::<u64>()?;
                weight
            }
        };
        if let Some(d) = self.delay {
            if r.offset % self.delay_every.max(1) == 0 {
                tokio::time::sleep(d).await;
            }
        }
        let count = {
            let mut counts = ctx.store(&self.counts)?;
            let c = counts.get(&key)?.unwrap_or(0) + 1;
            counts.put(&key, &c)?;
            c
        };
        let sum = {
            let mut sums = ctx.store(&self.sums)?;
            let s = sums.get(&key)?.unwrap_or(0) + n;
            sums.put(&key, &s)?;
            s
        };
        self.weights_seen
            .lock()
            .unwrap()
            .insert(key.clone(), weight);
        if let Some(echo) = &self.echo {
            ctx.send(
                echo,
                Some(&key),
                Some(&format!("{}:{}", r.partition, r.offset)),
            )?;
        }
        self.last.lock().unwrap().insert(key, (count, sum));
        if let Some(probe) = &self.probe {
            if r.offset % PROBE_EVERY == 0 {
                probe.line(&format!("processing {} {}", r.partition, r.offset));
            }
        }
        Ok(())
    }

    async fn on_assigned(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        if let Some(probe) = &self.probe {
            probe.line(&format!("assigned {}", ctx.partition()));
        }
        Ok(())
    }

    async fn on_revoked(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        if let Some(probe) = &self.probe {
            probe.line(&format!("revoked {}", ctx.partition()));
        }
        Ok(())
    }

    async fn on_lost(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        if let Some(probe) = &self.probe {
            probe.line(&format!("lost {}", ctx.partition()));
        }
        Ok(())
    }
}

/// A restore listener writing `restore-start <topic> <partition> <records>`,
/// `restore-end <topic> <partition> <records>` and `promoted <topic> <partition> <records>`
/// (a standby replica promoted) lines to a probe (tables report their
/// bootstraps here too, under the table topic).
pub struct ProbeListener(pub Arc<Probe>);

impl kafka_stateful::RestoreListener for ProbeListener {
    fn on_restore_start(&self, topic: &str, partition: i32, records: u64) {
        self.0
            .line(&format!("restore-start {topic} {partition} {records}"));
    }

    fn on_restore_end(&self, topic: &str, partition: i32, records: u64, _: Duration) {
        self.0
            .line(&format!("restore-end {topic} {partition} {records}"));
    }

    fn on_standby_promoted(&self, topic: &str, partition: i32, records: u64, _: Duration) {
        self.0
            .line(&format!("promoted {topic} {partition} {records}"));
    }
}

/// A tracing layer writing the library's events to a probe: every warning and error, and
/// the DEBUG/INFO events about flushes and restores, as `event <LEVEL>|<message>|k=v|…`.
pub struct ProbeLayer(pub Arc<Probe>);

#[derive(Default)]
struct EventText {
    message: String,
    fields: Vec<String>,
}

impl tracing::field::Visit for EventText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push(format!("{}={value:?}", field.name()));
        }
    }
}

/// The fields of a span, kept in its extensions so events inside it carry them.
struct SpanFields(Vec<String>);

impl<S> tracing_subscriber::Layer<S> for ProbeLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = EventText::default();
        attrs.record(&mut text);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(text.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        let mut text = EventText::default();
        event.record(&mut text);
        let keep = level <= tracing::Level::WARN
            || text.message.contains("flush")
            || text.message.contains("restore")
            || text.message.contains("bootstrap");
        if !keep {
            return;
        }
        // Fields of the enclosing spans first (e.g. the partition of a restore), then the
        // event's own.
        let mut fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    fields.extend(f.0.iter().cloned());
                }
            }
        }
        fields.extend(text.fields);
        let mut line = format!("event {level}|{}", text.message.replace('|', "/"));
        for f in &fields {
            line.push('|');
            line.push_str(&f.replace('|', "/"));
        }
        self.0.line(&line);
    }
}

/// Installs [`ProbeLayer`] for the library's events (DEBUG and up) as the global subscriber.
pub fn init_probe_tracing(probe: Arc<Probe>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("kafka_stateful", tracing::Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(ProbeLayer(probe).with_filter(filter))
        .try_init();
}

/// Writes the consumer's figures of every assigned partition to `probe` every 500 ms
/// (`stats <partition> ready=… queued=… …`), until the process ends.
pub fn probe_stats(stats: kafka_stateful::Stats, probe: Arc<Probe>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for ((_, p), s) in stats.snapshot().partitions {
                probe.line(&format!(
                    "stats {p} ready={} queued={} processed_next={} durable_next={} \
                     committed_next={} high_watermark={} skipped={} fenced={}",
                    s.ready,
                    s.queued,
                    s.processed_next,
                    s.durable_next,
                    s.committed_next,
                    s.high_watermark,
                    s.skipped,
                    s.fenced
                ));
            }
        }
    });
}

/// A probe file read back.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// `(ms, partition, offset)` of the sampled records the handler processed.
    pub processing: Vec<(u64, i32, i64)>,
    /// `(ms, partition, epoch)` of every "restore finished": the epoch this process owns
    /// the partition's changelogs with from then on.
    pub restored: Vec<(u64, i32, u64)>,
    /// `(ms, partition, epoch, seq)` of every "flushed state" (a flush's last step, after
    /// its RocksDB batch); the epoch is that of the partition's latest restore before it.
    pub flushed: Vec<(u64, i32, u64, u64)>,
    /// `(ms, partition, "assigned" | "revoked" | "lost")` from the handler's hooks.
    pub ownership: Vec<(u64, i32, String)>,
    /// Messages of the library's warnings and errors.
    pub warnings: Vec<String>,
    /// `(partition, epoch)` of restores that rewrote void keys ("changelog holds records of
    /// an unfinished flush …"): that epoch's first flush was written by the restore, which
    /// logs no "flushed state".
    pub repaired: std::collections::BTreeSet<(i32, u64)>,
    /// The latest [`probe_stats`] line per partition: `(ms, text)`.
    pub stats: BTreeMap<i32, (u64, String)>,
}

impl ProbeLog {
    /// Partitions whose last ownership event before `ms` is "assigned".
    pub fn held_at(&self, ms: u64) -> Vec<i32> {
        let mut last: BTreeMap<i32, &str> = BTreeMap::new();
        for (t, p, what) in &self.ownership {
            if *t <= ms {
                last.insert(*p, what);
            }
        }
        last.into_iter()
            .filter(|(_, w)| *w == "assigned")
            .map(|(p, _)| p)
            .collect()
    }

    /// `true` once the handler processed a sampled record at or after `ms`.
    pub fn processed_since(&self, ms: u64) -> bool {
        self.processing.iter().any(|(t, _, _)| *t >= ms)
    }
}

/// Reads a probe file (a missing file reads as empty; a torn last line is ignored).
pub fn read_probe(path: &std::path::Path) -> ProbeLog {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut log = ProbeLog::default();
    let mut epoch_of: HashMap<i32, u64> = HashMap::new();
    let mut repairing: std::collections::HashSet<i32> = Default::default();
    for line in complete.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(ms), Some(kind), rest) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(ms) = ms.parse::<u64>() else { continue };
        let rest = rest.unwrap_or("");
        match kind {
            "processing" => {
                let mut it = rest.split(' ').map(|w| w.parse::<i64>().ok());
                if let (Some(Some(p)), Some(Some(o))) = (it.next(), it.next()) {
                    log.processing.push((ms, p as i32, o));
                }
            }
            "stats" => {
                if let Some((p, text)) = rest.split_once(' ') {
                    if let Ok(p) = p.parse() {
                        log.stats.insert(p, (ms, text.to_string()));
                    }
                }
            }
            "assigned" | "revoked" | "lost" => {
                if let Ok(p) = rest.trim().parse() {
                    log.ownership.push((ms, p, kind.to_string()));
                }
            }
            "event" => {
                let mut parts = rest.split('|');
                let level = parts.next().unwrap_or("");
                let message = parts.next().unwrap_or("");
                let fields: HashMap<&str, &str> = parts.filter_map(|f| f.split_once('=')).collect();
                let num = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
                if level == "WARN" || level == "ERROR" {
                    log.warnings.push(message.to_string());
                    if message.starts_with("changelog holds records of an unfinished flush") {
                        if let Some(p) = num("partition") {
                            repairing.insert(p as i32);
                        }
                    }
                }
                match message {
                    "restore finished" => {
                        if let (Some(p), Some(e)) = (num("partition"), num("epoch")) {
                            if repairing.remove(&(p as i32)) {
                                log.repaired.insert((p as i32, e));
                            }
                            epoch_of.insert(p as i32, e);
                            log.restored.push((ms, p as i32, e));
                        }
                    }
                    "flushed state" => {
                        if let (Some(p), Some(s)) = (num("partition"), num("seq")) {
                            let p = p as i32;
                            let e = epoch_of.get(&p).copied().unwrap_or(u64::MAX);
                            log.flushed.push((ms, p, e, s));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    log
}

/// End offsets of `topic`, zeros when it does not exist (yet).
pub fn end_offsets_or_zero(topic: &str, partitions: i32) -> Vec<i64> {
    if partition_count_at(&bootstrap(), topic).is_none() {
        return vec![0; partitions as usize];
    }
    end_offsets(topic, partitions)
}

/// A flush's `(partition, epoch, seq)`, from the `ks` header of its changelog records.
pub type FlushId = (i32, u64, u64);

/// What the changelogs hold of one flush: data records and flush markers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushRecords {
    pub data: usize,
    pub markers: usize,
}

/// The changelog records written by flushes (data records and flush markers; epoch markers
/// are left out) in `topic` from `from[p]` to its current end, by `(partition, epoch, seq)`
/// (from their `ks` header); added to `out`.
pub fn changelog_flush_records(
    topic: &str,
    partitions: i32,
    from: &[i64],
    out: &mut BTreeMap<FlushId, FlushRecords>,
) {
    use rdkafka::message::{Headers, Message};
    let ends = end_offsets_or_zero(topic, partitions);
    let todo: Vec<i32> = (0..partitions)
        .filter(|p| from[*p as usize] < ends[*p as usize])
        .collect();
    if todo.is_empty() {
        return;
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("stamps"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in &todo {
        tpl.add_partition_offset(topic, *p, Offset::Offset(from[*p as usize]))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut next = from.to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    while todo.iter().any(|p| next[*p as usize] < ends[*p as usize]) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        next[m.partition() as usize] = m.offset() + 1;
        let key = m.key().unwrap_or_default();
        if key == b"\0kafka-stateful/epoch" {
            continue;
        }
        let stamp = m.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == "ks")
                .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_string))
        });
        let mut parts = stamp.as_deref().unwrap_or("").split('.').skip(1);
        if let (Some(Ok(e)), Some(Ok(s))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
        ) {
            let entry = out.entry((m.partition(), e, s)).or_default();
            if key == b"\0kafka-stateful/flush" {
                entry.markers += 1;
            } else {
                entry.data += 1;
            }
        }
    }
}

/// Where a SIGKILL landed, judged from the killed process's probe and the changelogs.
#[derive(Debug, Default)]
pub struct KillVerdict {
    /// Partitions the child had processed a sampled record of within
    /// [`ACTIVE_WINDOW_MS`] before the kill while records past it were still waiting
    /// (lag > 0): the kill landed while records were being processed.
    pub processing: Vec<i32>,
    /// Flushes of the killed process, by `(partition, epoch, seq)`, whose changelog records
    /// are in the changelog but whose "flushed state" (their last step) was never logged:
    /// the kill landed between that flush's start and its end.
    pub cut_flushes: Vec<(FlushId, FlushRecords)>,
    /// Flushes the child completed.
    pub flushes: usize,
}

impl KillVerdict {
    /// `p0 e439 s2: 21 data + 1/2 markers`, one per cut flush.
    pub fn cut_flushes_text(&self, stores: usize) -> String {
        let v: Vec<String> = self
            .cut_flushes
            .iter()
            .map(|((p, e, s), r)| {
                format!(
                    "p{p} epoch {e} seq {s}: {} data + {}/{stores} markers",
                    r.data, r.markers
                )
            })
            .collect();
        format!("[{}]", v.join("; "))
    }
}

/// How recent the last sampled record must be to count as "being processed" at the kill
/// (a sample is written every [`PROBE_EVERY`] records, i.e. every few ms to tens of ms).
pub const ACTIVE_WINDOW_MS: u64 = 250;

/// Classifies a kill at `kill_ms`. `ends`: the source end offsets at the kill; `flushes`:
/// [`changelog_flush_records`] of every store's changelog, read after the kill. Only
/// partitions in `held` (those the child owned at the kill) count for cut flushes.
pub fn classify_kill(
    log: &ProbeLog,
    kill_ms: u64,
    ends: &[i64],
    flushes: &BTreeMap<FlushId, FlushRecords>,
    held: &[i32],
) -> KillVerdict {
    let mut last: HashMap<i32, (u64, i64)> = HashMap::new();
    for (t, p, o) in &log.processing {
        if *t <= kill_ms {
            last.insert(*p, (*t, *o));
        }
    }
    let mut processing: Vec<i32> = last
        .iter()
        .filter(|(p, (t, o))| {
            kill_ms.saturating_sub(*t) <= ACTIVE_WINDOW_MS
                && o + PROBE_EVERY < ends.get(**p as usize).copied().unwrap_or(0)
        })
        .map(|(p, _)| *p)
        .collect();
    processing.sort_unstable();
    let epochs: std::collections::BTreeSet<(i32, u64)> =
        log.restored.iter().map(|(_, p, e)| (*p, *e)).collect();
    let done: std::collections::BTreeSet<FlushId> = log
        .flushed
        .iter()
        .map(|(_, p, e, s)| (*p, *e, *s))
        .collect();
    // Flushes of one partition run one after another, so only the last flush of each of
    // the child's epochs can have been cut; a restore's rewrite of void keys (the epoch's
    // first flush) logs no "flushed state" and does not count.
    let mut last: BTreeMap<(i32, u64), (FlushId, FlushRecords)> = BTreeMap::new();
    let mut first_seq: HashMap<(i32, u64), u64> = HashMap::new();
    for (&(p, e, s), r) in flushes {
        if held.contains(&p) && epochs.contains(&(p, e)) {
            let first = *first_seq.entry((p, e)).or_insert(s);
            if !(log.repaired.contains(&(p, e)) && s == first) {
                last.insert((p, e), ((p, e, s), *r));
            }
        }
    }
    let cut_flushes = last
        .into_values()
        .filter(|(stamp, _)| !done.contains(stamp))
        .collect();
    KillVerdict {
        processing,
        cut_flushes,
        flushes: log.flushed.len(),
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child already reaped")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `true` while the process runs.
    pub fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Like [`wait_until`] but returns `false` at the deadline instead of panicking.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A temporary directory for probe files, child logs and state; kept (and its path
/// printed) when `KS_KEEP_DIR` is set, to inspect a run afterwards.
pub fn test_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("KS_KEEP_DIR").is_some();
    let dir = tempfile::Builder::new()
        .prefix("ks-test")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        println!("keeping {}", dir.path().display());
    }
    dir
}

/// The running test binary, for re-running it as a child process. `/proc/self/exe` on Linux
/// still executes this binary when cargo replaced its file meanwhile (a concurrent build).
pub fn self_exe() -> std::path::PathBuf {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        proc_exe
    } else {
        std::env::current_exe().unwrap()
    }
}

/// Output records are at-least-once under SIGKILL although they are produced while
/// handling goes on: every input record's output is on the output topic (its offset was
/// committed, or its effect restored, only after that output was acknowledged). Returns
/// how many were sent more than once (records handled again after a kill).
pub fn every_record_echoed_at_least_once(topic: &str, partitions: i32) -> usize {
    let ends = super::end_offsets(topic, partitions);
    let echoed = super::read_all(&echo_topic(topic), partitions);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for (_, value, _) in &echoed {
        let value = String::from_utf8(value.clone().unwrap_or_default()).unwrap();
        *seen.entry(value).or_default() += 1;
    }
    let missing: Vec<String> = (0..partitions)
        .flat_map(|p| (0..ends[p as usize]).map(move |o| format!("{p}:{o}")))
        .filter(|record| !seen.contains_key(record))
        .collect();
    assert!(
        missing.is_empty(),
        "{} input records have no output record, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    echoed.len() - seen.len()
}

/// The output a [`CountSum`] echoes to on `topic`.
pub fn echo(topic: &str) -> kafka_stateful::Output<String, String> {
    kafka_stateful::Output::new(&echo_topic(topic), Utf8, Utf8)
}
