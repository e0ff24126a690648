#!/usr/bin/env bash
# The main job of README.md: system packages, data, release build, then the default study.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-data.sh
cargo build --release --bin vlmix
echo "vlmix: the study command is not built yet; engine, data and vision come first (see ARCHITECTURE.md)."
