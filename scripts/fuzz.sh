#!/usr/bin/env bash
# The on-demand longer run of the mutation tests (issue 26), for before releases: the same seeded
# harness as the test suite's `mutation` / `image_mutation` tests, with SCALE times the inputs per
# reader and a new seed each round (VLMIX_MUTATION_SCALE, VLMIX_MUTATION_SEED, read by
# crates/mutation), rounds repeated until SECONDS have passed (checked between test binaries, so a
# run overshoots by at most one binary's round). Prints the inputs tried per reader, and for a
# failure the round's seed and log: rerun it with
#   VLMIX_MUTATION_SEED=<round> VLMIX_MUTATION_SCALE=<scale> cargo test --release -p <crate> --test <test>
# and make the input a regression test beside the mutation test that found it.
#
# Usage: scripts/fuzz.sh SECONDS [SCALE (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/fuzz.sh SECONDS [SCALE]}"
scale="${2:-5}"
logs="${CARGO_TARGET_DIR:-target}/fuzz"
mkdir -p "$logs"
rm -f "$logs"/*.log

# Every crate's mutation test binaries, built once (JSON messages name each binary's path).
mapfile -t binaries < <(cargo test --release -p vlmix-engine -p vlmix-models -p vlmix-data -p vlmix-study \
    -p vlmix-ingest --test mutation --test image_mutation --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"].endswith("mutation") and m.get("executable"):
        print(m["executable"])')
echo "fuzz: ${#binaries[@]} test binaries, ${scale}x the inputs per reader, for ${seconds} s"

start=$SECONDS
round=0
failed=0
while (( SECONDS - start < seconds )); do
    round=$((round + 1))
    for binary in "${binaries[@]}"; do
        (( SECONDS - start < seconds )) || break
        log="$logs/round-$round-$(basename "$binary").log"
        # Only the mutation tests (named "..._survive(s)_mutation"), not the regression cases.
        if ! VLMIX_MUTATION_SEED=$round VLMIX_MUTATION_SCALE=$scale "$binary" surviv --nocapture >"$log" 2>&1; then
            failed=$((failed + 1))
            echo "fuzz: FAILED round $round (VLMIX_MUTATION_SEED=$round VLMIX_MUTATION_SCALE=$scale): $binary, log $log"
            grep -E "panicked|inputs panicked|asked for .* bytes" "$log" | head -5 || true
        fi
    done
done

echo "fuzz: $round round(s) in $((SECONDS - start)) s; inputs tried per reader:"
cat "$logs"/*.log | sed -n 's/^mutation \(.*\): \([0-9]*\) inputs tried.*/\2\t\1/p' \
    | awk -F'\t' '{n[$2] += $1} END {for (r in n) printf "  %9d  %s\n", n[r], r}' | sort -k2
if (( failed > 0 )); then
    echo "fuzz: $failed failing binary round(s); logs under $logs" >&2
    exit 1
fi
echo "fuzz: no panics, aborts or oversized allocations"
