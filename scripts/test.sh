#!/usr/bin/env bash
# The whole test suite, as the README gives it: build dependencies, a broker, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/broker.sh
if [ "${REQUIRE_KAFKA:-}" = "1" ]; then
  # Every test must run, including the one that starts its own durable nisshi.
  scripts/broker.sh --install-nisshi
fi
# The exactly-once tests need transactions, which nisshi refuses: tansu on a second port
# (an Apache Kafka has them: KAFKA_TXN_BOOTSTRAP=<its address> uses it instead).
if ! scripts/txn-broker.sh && [ "${REQUIRE_KAFKA:-}" = "1" ]; then
  exit 1
fi
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
# Integration tests start many consumer groups; run them two at a time on small machines.
cargo test --all-targets -- --test-threads="${TEST_THREADS:-2}"
# Doc examples, and the optional Prometheus endpoint.
cargo test --doc
cargo test --features prometheus --test prometheus
