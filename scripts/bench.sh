#!/usr/bin/env bash
# Side-by-side benchmarks of vlmix against its PyTorch twins under reference/, in one run each:
#   train   `vlmix bench train` vs reference/bench_train.py: full training steps of the reference model
#   score   `vlmix bench score` vs reference/bench_score.py: multiple-choice scoring of the mini study's
#           model, whole rows against a prefix (KV) cache
#   encode  `vlmix bench encode` vs reference/bench_encode.py: EfficientNet-Lite0 images/s on the same
#           weights (needs scripts/fetch-weights.sh)
# Runs alternate (vlmix, torch, vlmix, torch, ...) so background load hits both alike; the best
# round of each engine is compared. Needs python3 with torch (only for this comparison).
# A figure measured under load is not a result: the 1-minute load average at the start decides (a
# warning says so when it is above 0.5); the loads printed before later runs include this benchmark's
# own two busy threads, so they read ~1-2 even on an idle machine.
#
# Usage: scripts/bench.sh [train] [rounds (default 2)] [timed steps per round (default 10)]
#        scripts/bench.sh score [rounds (default 2)] [items (default 256)]
#        scripts/bench.sh encode [rounds (default 3)] [images per round (default 64)] [batch (default 4)]
set -euo pipefail
cd "$(dirname "$0")/.."
kind=train
case "${1:-}" in
    train | score | encode) kind="$1"; shift ;;
esac
threads=2
vlmix="${CARGO_TARGET_DIR:-target}/release/vlmix"
case "$kind" in
    train)
        rounds="${1:-2}"
        steps="${2:-10}"
        vlmix_cmd=("$vlmix" bench train --json --threads "$threads" --steps "$steps")
        torch_cmd=(python3 reference/bench_train.py --threads "$threads" --steps "$steps")
        ;;
    score)
        rounds="${1:-2}"
        items="${2:-256}"
        vlmix_cmd=("$vlmix" bench score --json --threads "$threads" --items "$items")
        torch_cmd=(python3 reference/bench_score.py --threads "$threads" --items "$items")
        ;;
    encode)
        rounds="${1:-3}"
        images="${2:-64}"
        batch="${3:-4}"
        vlmix_cmd=("$vlmix" bench encode --json --threads "$threads" --images "$images" --batch "$batch")
        torch_cmd=(python3 reference/bench_encode.py --threads "$threads" --images "$images" --batch "$batch")
        ;;
esac
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
    "${vlmix_cmd[@]}" >"$out/vlmix-$r.json"
    loads+=("$(load)")
    echo "round $r/$rounds: pytorch (load average $(load))" >&2
    "${torch_cmd[@]}" >"$out/torch-$r.json"
done
python3 - "$kind" "$out" "$threads" "$start_load" "${loads[*]}" <<'PY'
import glob, json, os, subprocess, sys
kind, out, threads, start_load, loads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
runs = {e: [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{e}-*.json")))] for e in ("vlmix", "torch")}
best = lambda engine, key: max(runs[engine], key=key)
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith(k)), "?")
v0, t0 = runs["vlmix"][0], runs["torch"][0]
print(f"machine: {field('Model name')}, {os.cpu_count()} logical CPUs ({field('Core(s) per socket')} cores/socket), "
      f"threads {threads}, OpenBLAS core {v0['blas_core']}, torch {t0['torch']}")
print(f"load average: {start_load} at start" + ("  ** NOT QUIET: not a result **" if float(start_load) > 0.5 else " (quiet)")
      + f"; {' / '.join(loads)} before each run and {os.getloadavg()[0]:.2f} at the end, this benchmark's own load included")
rounds = len(runs["vlmix"])
if kind == "train":
    key = lambda r: r["tokens_per_s"]
    v, t = best("vlmix", key), best("torch", key)
    print(f"model: {v['model']} (batch {v['batch']} x seq {v['seq']}), {v['steps']} timed steps after {v['warmup']} warm-up, best of {rounds} rounds")
    print(f"{'':10} {'tokens/s':>10} {'GFLOP/s':>9} {'step ms':>9} {'peak RSS MiB':>13}")
    for name, r in (("vlmix", v), ("pytorch", t)):
        print(f"{name:10} {r['tokens_per_s']:10.1f} {r['gflops']:9.1f} {r['step_ms']:9.1f} {r['peak_rss_mb']:13.1f}")
    print(f"throughput vlmix/pytorch: {v['tokens_per_s'] / t['tokens_per_s']:.2f}x   "
          f"peak RSS vlmix/pytorch: {v['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
    print(f"all rounds tokens/s: vlmix {[round(key(r)) for r in runs['vlmix']]}, pytorch {[round(key(r)) for r in runs['torch']]}")
    print(f"vlmix step breakdown (ms): forward+backward {v['forward_backward_ms']:.1f}, clip {v['clip_ms']:.1f}, AdamW {v['optimizer_ms']:.1f}")
elif kind == "score":
    print(f"model: {v0['model']}; {v0['items']} items of a {v0['prefix']}-token prompt and {v0['choices']} answers of "
          f"{v0['choice_len']} tokens, at most {v0['rows_per_pass']} rows a pass; best of {rounds} rounds per method")
    print(f"{'':8} {'method':13} {'items/s':>9} {'positions/s':>12} {'GFLOP/s':>8} {'passes':>7} {'all rounds items/s'}")
    top = {}
    for engine, name in (("vlmix", "vlmix"), ("torch", "pytorch")):
        for method, label in (("full", "whole rows"), ("cached", "prefix cache")):
            r = best(engine, lambda r: r[method]["items_per_s"])[method]
            top[engine, method] = r["items_per_s"]
            every = [round(x[method]["items_per_s"], 1) for x in runs[engine]]
            print(f"{name:8} {label:13} {r['items_per_s']:9.1f} {r['positions_per_s']:12.0f} {r['gflops']:8.1f} {r['passes']:7} {every}")
    print(f"vlmix/pytorch items/s: whole rows {top['vlmix', 'full'] / top['torch', 'full']:.2f}x, "
          f"prefix cache {top['vlmix', 'cached'] / top['torch', 'cached']:.2f}x")
    print(f"prefix cache/whole rows items/s: vlmix {top['vlmix', 'cached'] / top['vlmix', 'full']:.2f}x, "
          f"pytorch {top['torch', 'cached'] / top['torch', 'full']:.2f}x")
    print(f"largest score difference between the methods: vlmix {max(r['max_score_diff'] for r in runs['vlmix']):.1e}, "
          f"pytorch {max(r['max_score_diff'] for r in runs['torch']):.1e}; peak RSS MiB: vlmix "
          f"{max(r['peak_rss_mb'] for r in runs['vlmix']):.0f}, pytorch {max(r['peak_rss_mb'] for r in runs['torch']):.0f}")
else:
    key = lambda r: r["images_per_s"]
    v, t = best("vlmix", key), best("torch", key)
    print(f"encoder: {v['encoder']} {v['resolution']} px, {v['layer']} features ({v['tokens']} x {v['width']}), batch {v['batch']}, "
          f"{v['images']} timed images after {v['warmup']} warm-up batches, best of {rounds} rounds; "
          f"{v['flops_per_image'] / 1e9:.3f} GFLOP/image (pytorch counts {t['flops_per_image'] / 1e9:.3f})")
    print(f"{'':10} {'images/s':>10} {'GFLOP/s':>9} {'batch ms':>9} {'peak RSS MiB':>13}")
    for name, r in (("vlmix", v), ("pytorch", t)):
        print(f"{name:10} {r['images_per_s']:10.1f} {r['gflops']:9.1f} {r['batch_ms']:9.1f} {r['peak_rss_mb']:13.1f}")
    print(f"throughput vlmix/pytorch: {v['images_per_s'] / t['images_per_s']:.2f}x   "
          f"peak RSS vlmix/pytorch: {v['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
    print(f"all rounds images/s: vlmix {[round(key(r), 1) for r in runs['vlmix']]}, pytorch {[round(key(r), 1) for r in runs['torch']]}")
PY
