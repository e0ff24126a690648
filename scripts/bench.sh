#!/usr/bin/env bash
# Side-by-side training-step benchmark: `vlmix bench train` against its PyTorch twin
# (reference/bench_train.py) on the same reference model, batch and step, in one run.
# Runs alternate (vlmix, torch, vlmix, torch, ...) so background load hits both alike; the best
# round of each engine is compared. Needs python3 with torch (only for this comparison).
# A figure measured under load is not a result: the 1-minute load average at the start decides (a
# warning says so when it is above 0.5); the loads printed before later runs include this benchmark's
# own two busy threads, so they read ~1-2 even on an idle machine.
#
# Usage: scripts/bench.sh [rounds (default 2)] [timed steps per round (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
steps="${2:-10}"
threads=2
cargo build --release --bin vlmix >&2
load() { cut -d' ' -f1 /proc/loadavg; }
start_load="$(load)"
if awk -v l="$start_load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "bench: WARNING: load average $start_load > 0.5 at start: the machine is not quiet, so these numbers are not a result; rerun when it is idle" >&2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
loads=()
for r in $(seq 1 "$rounds"); do
    loads+=("$(load)")
    echo "round $r/$rounds: vlmix (load average $(load))" >&2
    target/release/vlmix bench train --json --threads "$threads" --steps "$steps" >"$out/vlmix-$r.json"
    loads+=("$(load)")
    echo "round $r/$rounds: pytorch (load average $(load))" >&2
    python3 reference/bench_train.py --threads "$threads" --steps "$steps" >"$out/torch-$r.json"
done
python3 - "$out" "$threads" "$start_load" "${loads[*]}" <<'PY'
import glob, json, os, subprocess, sys
out, threads, start_load, loads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
def best(prefix):
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, prefix + "-*.json")))]
    return max(runs, key=lambda r: r["tokens_per_s"]), runs
v, vr = best("vlmix")
t, tr = best("torch")
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith(k)), "?")
print(f"machine: {field('Model name')}, {os.cpu_count()} logical CPUs ({field('Core(s) per socket')} cores/socket), "
      f"threads {threads}, OpenBLAS core {v['blas_core']}, torch {t['torch']}")
print(f"load average: {start_load} at start" + ("  ** NOT QUIET: not a result **" if float(start_load) > 0.5 else " (quiet)")
      + f"; {' / '.join(loads)} before each run and {os.getloadavg()[0]:.2f} at the end, this benchmark's own load included")
print(f"model: {v['model']} (batch {v['batch']} x seq {v['seq']}), {v['steps']} timed steps after {v['warmup']} warm-up, best of {len(vr)} rounds")
print(f"{'':10} {'tokens/s':>10} {'GFLOP/s':>9} {'step ms':>9} {'peak RSS MiB':>13}")
for name, r in (("vlmix", v), ("pytorch", t)):
    print(f"{name:10} {r['tokens_per_s']:10.1f} {r['gflops']:9.1f} {r['step_ms']:9.1f} {r['peak_rss_mb']:13.1f}")
print(f"throughput vlmix/pytorch: {v['tokens_per_s'] / t['tokens_per_s']:.2f}x   "
      f"peak RSS vlmix/pytorch: {v['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
print(f"all rounds tokens/s: vlmix {[round(r['tokens_per_s']) for r in vr]}, pytorch {[round(r['tokens_per_s']) for r in tr]}")
print(f"vlmix step breakdown (ms): forward+backward {v['forward_backward_ms']:.1f}, clip {v['clip_ms']:.1f}, AdamW {v['optimizer_ms']:.1f}")
PY
