#!/usr/bin/env python3
"""Quix Streams comparison job for the kafka-stateful throughput benchmark.

Counts records per key in Quix state (RocksDB, changelog topics on,
at-least-once) and prints exactly one JSON line to stdout:

  {"bench":"<NAME>","records":<n>,"records_per_s":<f>,
   "cpu_us_per_record":<f>,"peak_rss_mb":<f>}

Timing starts at the first record processed and stops at the N-th;
"records" is N - 1 (the records processed after the first one).
CPU time is the whole process (user + system, all threads, so it includes
librdkafka's threads). Everything else goes to stderr.

Usage:
  python3 benches/quix_count.py --brokers 127.0.0.1:9092 --topic T \
      --records N --name NAME [--state-dir DIR] [--timeout-s 600]

Install: pip install -r benches/requirements-quix.txt  (quixstreams==3.28.1)
"""

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time


def log(msg):
    print(f"quix_count: {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", required=True, help="bootstrap servers, host:port")
    p.add_argument("--topic", required=True, help="input topic (str keys, raw bytes values)")
    p.add_argument("--records", type=int, required=True, help="stop after N records")
    p.add_argument("--name", required=True, help="bench name for the JSON line")
    p.add_argument("--state-dir", default=None, help="state dir (default: a fresh temp dir, removed at exit)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="overall timeout (default 600)")
    p.add_argument("--commit-interval-s", type=float, default=5.0,
                   help="Quix commit_interval (default 5.0, the Quix default)")
    p.add_argument("--keep-changelog", action="store_true",
                   help="do not delete the changelog topic(s) Quix created for this run")
    a = p.parse_args()
    if a.records < 2:
        p.error("--records must be >= 2")
    if a.timeout_s <= 0:
        p.error("--timeout-s must be > 0")
    return a


# Kafka's defaults for the two topic configs Quix reads from the input topic
# to derive its changelog topic's config.
KAFKA_DEFAULT_TOPIC_CONFIG = {"retention.ms": "604800000", "retention.bytes": "-1"}


def patch_missing_topic_defaults():
    """Brokers such as nisshi answer DescribeConfigs with only the configs set
    explicitly on the topic (Kafka returns every config, defaults included).
    Quix 3.28.1 then fails in TopicManager.derive_topic_config with
    KeyError: 'retention.ms'. Fill in Kafka's defaults for configs the broker
    did not report, so the changelog topic is derived as on Kafka."""
    from quixstreams.models.topics.manager import TopicManager

    orig_fetch = TopicManager._fetch_topic  # noqa: SLF001

    def fetch_topic(self, topic):
        fetched = orig_fetch(self, topic)
        cfg = fetched.broker_config
        missing = {k: v for k, v in KAFKA_DEFAULT_TOPIC_CONFIG.items()
                   if k not in cfg.extra_config}
        if missing:
            log(f"broker did not report {sorted(missing)} for topic {fetched.name}; "
                f"assuming Kafka defaults {missing}")
            fetched.broker_config = dataclasses.replace(
                cfg, extra_config={**missing, **cfg.extra_config})
        return fetched

    TopicManager._fetch_topic = fetch_topic  # noqa: SLF001


def main():
    args = parse_args()
    try:
        return run(args)
    except Exception as e:  # noqa: BLE001
        log(f"failed: {type(e).__name__}: {e}")
        return 1


def run(args):
    # Keep stdout clean for the single JSON line: anything the library might
    # print goes to stderr instead.
    sys.stdout = sys.stderr

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    os.environ.setdefault("Quix__Loglevel", "WARNING")

    try:
        import quixstreams  # noqa: F401  (fail early with a clear message)
    except ImportError as e:
        log(f"cannot import quixstreams ({e}); pip install -r benches/requirements-quix.txt")
        return 2
    patch_missing_topic_defaults()

    # Quix would auto-create a missing input topic and then wait for records
    # until the timeout; fail fast instead.
    from confluent_kafka.admin import AdminClient
    # (list all topics: a metadata request naming the topic may auto-create it)
    md = AdminClient({"bootstrap.servers": args.brokers}).list_topics(
        timeout=min(30.0, args.timeout_s))
    tmd = md.topics.get(args.topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        err = tmd.error if tmd is not None else "not found"
        log(f"input topic {args.topic!r} is not usable on {args.brokers}: {err}")
        return 1

    if args.state_dir is not None:
        return run_app(args, args.state_dir)
    state_dir = tempfile.mkdtemp(prefix="quix-bench-state-")
    try:
        return run_app(args, state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def run_app(args, state_dir):
    from quixstreams import Application

    group = f"quix-bench-{os.getpid()}-{int(time.time() * 1000)}"
    target = args.records

    app = Application(
        broker_address=args.brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=state_dir,
        use_changelog_topics=True,
        commit_interval=args.commit_interval_s,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, key_deserializer="str", value_deserializer="bytes")
    sdf = app.dataframe(topic)

    # Mutable run state shared with the apply function and the timers.
    st = {
        "n": 0,          # records processed
        "new_keys": 0,   # records whose count came back as 1 (first seen key)
        "t0": 0.0, "c0": 0.0, "t1": 0.0, "c1": 0.0,
        "done": False, "timed_out": False, "commits": 0,
        "t_apply": 0.0, "c_apply": 0.0,
    }
    perf = time.perf_counter
    cpu = time.process_time

    def count(value, state):
        c = state.get("count", 0) + 1
        state.set("count", c)
        n = st["n"] + 1
        st["n"] = n
        if c == 1:
            st["new_keys"] += 1
        if n == 1:
            st["t0"] = perf()
            st["c0"] = cpu()
        elif n == target:
            st["t_apply"] = perf()
            st["c_apply"] = cpu()
            st["done"] = True
            app.stop()
        return value

    sdf = sdf.apply(count, stateful=True)

    # Quix writes state to RocksDB and produces the changelog only when a
    # checkpoint is committed (every commit_interval). The measured window
    # therefore ends after the forced checkpoint commit that app.run() makes
    # once stopped, so the last records' state and offsets are durable too
    # (a short run might otherwise contain no commit at all).
    ctx = app._processing_context  # noqa: SLF001
    orig_commit = ctx.commit_checkpoint

    def commit_checkpoint(force=False, revoking=False):
        if (force or ctx.checkpoint.expired()) and not ctx.checkpoint.empty():
            st["commits"] += 1
        orig_commit(force=force, revoking=revoking)
        if st["done"] and force and st["t1"] == 0.0:
            st["t1"] = perf()
            st["c1"] = cpu()

    ctx.commit_checkpoint = commit_checkpoint

    # Soft timeout: ask the app to stop. Hard timeout: if it still has not
    # returned 60 s later, kill the process so a benchmark never hangs.
    def soft_timeout():
        if not st["done"]:
            st["timed_out"] = True
            log(f"timeout after {args.timeout_s:.0f}s: processed {st['n']} of {target} records; stopping")
            app.stop()

    def hard_timeout():
        log("application did not stop within 60s after the timeout; exiting")
        os._exit(3)

    soft = threading.Timer(args.timeout_s, soft_timeout)
    soft.daemon = True
    hard = threading.Timer(args.timeout_s + 60.0, hard_timeout)
    hard.daemon = True
    soft.start()
    hard.start()

    rc = 0
    wall0 = perf()
    try:
        app.run()
    except Exception as e:  # noqa: BLE001
        log(f"application failed: {type(e).__name__}: {e}")
        rc = 1
    finally:
        soft.cancel()
    wall = perf() - wall0

    changelogs = []
    try:
        changelogs = [t.name for t in app._topic_manager.changelog_topics_list]  # noqa: SLF001
    except Exception:  # noqa: BLE001
        pass

    if rc == 0 and not st["done"]:
        log(f"stopped before reaching {target} records (processed {st['n']})")
        rc = 1

    if rc == 0:
        recs = target - 1
        if st["t1"] == 0.0:  # no forced commit seen after the last record
            st["t1"], st["c1"] = st["t_apply"], st["c_apply"]
        dt = st["t1"] - st["t0"]
        dcpu = st["c1"] - st["c0"]
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {
            "bench": args.name,
            "records": recs,
            "records_per_s": round(recs / dt, 1) if dt > 0 else 0.0,
            "cpu_us_per_record": round(dcpu * 1e6 / recs, 3),
            "peak_rss_mb": round(peak_kb / 1024.0, 1),
        }
        log(f"group={group} distinct_keys_seen={st['new_keys']} "
            f"measured={dt:.3f}s (to last apply {st['t_apply'] - st['t0']:.3f}s) "
            f"cpu={dcpu:.3f}s (to last apply {st['c_apply'] - st['c0']:.3f}s) "
            f"commits={st['commits']} total_run={wall:.3f}s changelogs={changelogs}")
        sys.__stdout__.write(json.dumps(out, separators=(",", ":")) + "\n")
        sys.__stdout__.flush()

    # Best-effort cleanup: the changelog topic is per consumer group, so every
    # run creates a new one on the broker.
    if changelogs and not args.keep_changelog:
        try:
            from confluent_kafka.admin import AdminClient
            admin = AdminClient({"bootstrap.servers": args.brokers})
            for t, f in admin.delete_topics(changelogs, operation_timeout=10).items():
                try:
                    f.result(timeout=15)
                except Exception as e:  # noqa: BLE001
                    log(f"could not delete changelog topic {t}: {e}")
        except Exception as e:  # noqa: BLE001
            log(f"changelog cleanup failed: {e}")

    hard.cancel()
    return rc


if __name__ == "__main__":
    sys.exit(main())
