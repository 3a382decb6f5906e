#!/usr/bin/env bash
# `make dev`: the embedded moto server (:4566) and the Binance simulator (:8765) that
# config/local.yaml points at, then the Dagster UI; everything stops together on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
export DAGSTER_DISABLE_TELEMETRY=1
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
.venv/bin/ingest-pipeline local-aws --port 4566 & pids+=($!)
.venv/bin/ingest-pipeline simulator --port 8765 & pids+=($!)
# Job control gives dagster dev its own process group with default signal handling; started
# plainly from a non-interactive shell it would inherit an ignored SIGINT.
set -m
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${DAGSTER_PORT:-3000}"
