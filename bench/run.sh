#!/usr/bin/env bash
# Fleet-scale benchmark, one command (as root): builds the release binary and
# the harness, runs the plan() micro-benchmark (criterion), then the
# namespace benchmark, which rewrites the generated part of BENCHMARKS.md,
# bench/results.json and bench/scaling.svg.
#
#   bash bench/run.sh            # full: N = 100, 1000, 10000 (+ dual-stack 1000), 5 reps
#   bash bench/run.sh --quick    # smoke run: small N, 3 reps (no criterion)
#   bash bench/run.sh --reps 9   # more repetitions
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: needs root (it creates network namespaces)" >&2
    exit 2
fi
cargo build --release --bin netconverge --example bench
case " $* " in
    *" --quick "*) ;;
    *) cargo bench --bench plan ;;
esac
exec target/release/examples/bench "$@"
