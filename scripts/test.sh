#!/usr/bin/env bash
# The test command of README.md: system packages, test data, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-data.sh
cargo test --release --workspace "$@"
