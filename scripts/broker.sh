#!/usr/bin/env bash
# Makes a Kafka-protocol broker reachable at $KAFKA_BOOTSTRAP (default 127.0.0.1:9092):
#   1. one already listening there is used as it is;
#   2. else, when a Docker engine answers, `docker compose up --wait` (Apache Kafka, KRaft);
#   3. else nisshi 0.8.1 (a Kafka-API broker from crates.io) is built once into
#      $KAFKA_STATEFUL_CACHE (default ~/.cache/kafka-stateful) and started in the background.
# Idempotent. Exits non-zero with a message when no broker can be made reachable.
#
# `scripts/broker.sh --install-nisshi` only builds/caches the nisshi binary (tests that run
# their own durable broker, such as the broker-restart test, need it even when Docker serves
# the main broker).
set -euo pipefail
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
HOST="${BOOTSTRAP%:*}"; PORT="${BOOTSTRAP##*:}"
CACHE="${KAFKA_STATEFUL_CACHE:-$HOME/.cache/kafka-stateful}"
NISSHI_VERSION=0.8.1
NISSHI="$CACHE/nisshi-$NISSHI_VERSION/bin/nisshi"
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

install_nisshi() {
  if [ -x "$NISSHI" ]; then
    return 0
  fi
  echo "broker: building nisshi $NISSHI_VERSION into $CACHE (once; about 9 minutes on 2 cores)"
  # --ignore-rust-version: nisshi declares rustc 1.96; with --locked it builds and runs on 1.95.
  # Its own target dir, so that it never shares (or invalidates) the project's.
  CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install nisshi --version "$NISSHI_VERSION" \
    --locked --ignore-rust-version --no-default-features --features dynostore,libsql \
    --root "$CACHE/nisshi-$NISSHI_VERSION"
  rm -rf "$CACHE/nisshi-build"
}

if [ "${1:-}" = "--install-nisshi" ]; then
  install_nisshi
  echo "broker: nisshi at $NISSHI"
  exit 0
fi

if listening; then
  echo "broker: already listening on $BOOTSTRAP"
  exit 0
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "broker: starting Apache Kafka with docker compose"
  docker compose up -d --wait
  exit 0
fi

install_nisshi

LOG="$CACHE/nisshi-$PORT.log"
echo "broker: starting nisshi on $BOOTSTRAP (log: $LOG)"
nohup "$NISSHI" broker \
  --listener-url "tcp://$HOST:$PORT" --advertised-listener-url "tcp://$HOST:$PORT" \
  --storage-engine memory://nisshi/ >"$LOG" 2>&1 &
echo $! >"$CACHE/nisshi-$PORT.pid"
for _ in $(seq 1 100); do
  if listening; then
    echo "broker: nisshi is listening on $BOOTSTRAP"
    exit 0
  fi
  sleep 0.2
done
echo "broker: nisshi did not start listening on $BOOTSTRAP within 20 s; last log lines:" >&2
tail -20 "$LOG" >&2 || true
exit 1
