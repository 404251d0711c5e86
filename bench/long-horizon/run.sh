#!/usr/bin/env bash
# One ~10-minute pass of the independent long-horizon harness over every fault it
# has, natively (no Docker): see run_native.py and BENCHMARKS.md.
#   HARNESS_DIR=/tmp/harness REVIEWQ_BIN=target/release/reviewq bench/long-horizon/run.sh reviewq [awa]
# The harness needs Python >= 3.12 with psycopg, matplotlib, pandas, numpy and pydantic
# (PYTHON names that interpreter). postgres-restart restarts the whole local cluster.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${HARNESS_DIR:?the harness checkout}"
export HARNESS_DIR REVIEWQ_BIN="$(realpath "${REVIEWQ_BIN:-$here/../../target/release/reviewq}")"
# Adapter pacing: the harness's own stdin pacer never reads the high-load phase's
# rate file, so with it the pressure phase would offer no extra load.
export PRODUCER_PACING=adapter
systems="$(IFS=,; echo "${*:-reviewq}")"
cd "$HARNESS_DIR"
# Post-fault phases are typed `recovery`, so every fault's baseline is clean_1.
exec "${PYTHON:-python3}" "$here/run_native.py" run --systems "$systems" --fast --skip-build \
  --producer-rate "${PRODUCER_RATE:-800}" --worker-count "${WORKER_COUNT:-32}" \
  --sample-every 5 --high-load-multiplier 2 \
  --phase warmup=warmup:30s --phase clean_1=clean:90s \
  --phase idle_1=idle-in-tx:90s --phase recovery_1=recovery:60s \
  --phase 'kills=pg-backend-kill(rate=2):60s' --phase after_kills=recovery:45s \
  --phase pgrestart=postgres-restart:40s --phase after_restart=recovery:45s \
  --phase pressure_1=high-load:90s --phase after_pressure=clean:30s
