#!/usr/bin/env bash
# Side-by-side training-step benchmark: `vlmix bench train` against its PyTorch twin
# (reference/bench_train.py) on the same reference model, batch and step, in one run.
# Runs alternate (vlmix, torch, vlmix, torch, ...) so background load hits both alike; the best
# round of each engine is compared. Needs python3 with torch (only for this comparison).
#
# Usage: scripts/bench.sh [rounds (default 2)] [timed steps per round (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
steps="${2:-10}"
threads=2
cargo build --release --bin vlmix >&2
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds: vlmix" >&2
    target/release/vlmix bench train --json --threads "$threads" --steps "$steps" >"$out/vlmix-$r.json"
    echo "round $r/$rounds: pytorch" >&2
    python3 reference/bench_train.py --threads "$threads" --steps "$steps" >"$out/torch-$r.json"
done
python3 - "$out" "$threads" <<'PY'
import glob, json, os, subprocess, sys
out, threads = sys.argv[1], sys.argv[2]
def best(prefix):
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, prefix + "-*.json")))]
    return max(runs, key=lambda r: r["tokens_per_s"]), runs
v, vr = best("vlmix")
t, tr = best("torch")
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith(k)), "?")
print(f"machine: {field('Model name')}, {os.cpu_count()} logical CPUs ({field('Core(s) per socket')} cores/socket), "
      f"threads {threads}, OpenBLAS core {v['blas_core']}, torch {t['torch']}, load average {os.getloadavg()[0]:.2f}")
print(f"model: {v['model']} (batch {v['batch']} x seq {v['seq']}), {v['steps']} timed steps after {v['warmup']} warm-up, best of {len(vr)} rounds")
print(f"{'':10} {'tokens/s':>10} {'GFLOP/s':>9} {'step ms':>9} {'peak RSS MiB':>13}")
for name, r in (("vlmix", v), ("pytorch", t)):
    print(f"{name:10} {r['tokens_per_s']:10.1f} {r['gflops']:9.1f} {r['step_ms']:9.1f} {r['peak_rss_mb']:13.1f}")
print(f"throughput vlmix/pytorch: {v['tokens_per_s'] / t['tokens_per_s']:.2f}x   "
      f"peak RSS vlmix/pytorch: {v['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
print(f"all rounds tokens/s: vlmix {[round(r['tokens_per_s']) for r in vr]}, pytorch {[round(r['tokens_per_s']) for r in tr]}")
print(f"vlmix step breakdown (ms): forward+backward {v['forward_backward_ms']:.1f}, clip {v['clip_ms']:.1f}, AdamW {v['optimizer_ms']:.1f}")
PY
