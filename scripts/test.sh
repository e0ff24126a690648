#!/usr/bin/env bash
# The test command of README.md: prerequisites (scripts/prepare.sh), then the whole test suite in
# release mode (the numerics tests are heavy in debug builds). `--no-fail-fast` runs every test
# binary even when one fails; cargo still exits non-zero if any test failed. The Slurm and MPI tests
# start and stop their own daemons and ranks (scripts/slurm-local.sh; setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prepare.sh
cargo test --release --workspace --no-fail-fast "$@"
