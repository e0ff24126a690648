#!/usr/bin/env bash
# The one script to run on a GPU machine for the CUDA backend (issue 12). Two halves:
#
#   scripts/gpu-check.sh --prepare     here (Rust, OpenBLAS, no GPU): builds and strips
#                                      vlmix-cuda-check, writes the CPU engine's kernel outputs, into
#                                      target/gpu-check/ (the folder to carry to the GPU machine, < 64 MiB)
#   scripts/gpu-check.sh [OUTDIR]      on the GPU machine (driver, python3 with PyTorch and pip's nvidia-*
#                                      wheels; no Rust, no network): runs every check, writes
#                                      OUTDIR/summary.json and OUTDIR/gpu-check.log (OUTDIR defaults to $OUT)
#
# Checks: the CUDA libraries load; every Device kernel on CUDA against the CPU engine's outputs on random
# data (f32: normwise 1e-4; bf16: 3e-2 for outputs through a matrix product, 1e-4 for the rest); cuBLASLt
# GEMM TFLOP/s (the measured MFU denominator); the flash-style attention kernels against the plain path
# (1e-4, with times and saved-buffer sizes); PyTorch's training step for openlm-79m (eager bf16
# autocast and torch.compile) and openlm-1b (eager bf16) at seq 2048 with tokens/s, MFU and peak memory.
# vlmix's own training steps on CUDA (50 steps against the CPU loss curve, the VLM cooldown step, the
# throughput side by side) run once the carried `vlmix` has `--device`; until then they are reported as
# pending. Exits non-zero when a check fails. Budget: about 6 minutes on an H200 (each check has a timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
kit=target/gpu-check
# H200 SXM dense bf16 (datasheet, without sparsity): the second MFU denominator.
DATASHEET_BF16_TFLOPS=989

# vlmix's own training-step checks: the reference model's loss after 50 steps on one fixed batch from the same
# seed (it memorises the batch: ~9.0 -> ~0.03), CUDA f32 within 1e-3 of the CPU's, bf16 within 2 % of the
# curve's scale (ln vocab = 9.01); then throughput at seq 2048 beside PyTorch's (same batches).
STEPS_ARGS=(--model reference --batch 8 --steps 50 --warmup 0 --json)
BATCH_79M=16
BATCH_1B=4

if [ "${1:-}" = "--prepare" ]; then
    set -e
    # Where cargo puts the binaries (CARGO_TARGET_DIR when set).
    built="${CARGO_TARGET_DIR:-target}/release"
    cargo build --release -p vlmix-engine --bin vlmix-cuda-check
    cargo build --release --bin vlmix
    rm -rf "$kit"
    mkdir -p "$kit"
    strip -o "$kit/vlmix-cuda-check" "$built"/vlmix-cuda-check
    "$kit/vlmix-cuda-check" reference "$kit/cpu-reference.safetensors"
    if "$built"/vlmix bench train --help | grep -q -- '--device'; then
        strip -o "$kit/vlmix" "$built"/vlmix
        # Its shared libraries beyond glibc (Open MPI, fontconfig, ...), which the GPU machine may lack.
        mkdir -p "$kit/lib"
        ldd "$built"/vlmix | awk '/=> \//{print $3}' |
            grep -Ev '/(libc|libm|libgcc_s|libpthread|libdl|librt|libstdc\+\+)\.so' | xargs -r cp -L -t "$kit/lib"
        echo "gpu-check: the CPU's loss after 50 steps of the reference model"
        "$built"/vlmix bench train --device cpu "${STEPS_ARGS[@]}" >"$kit/cpu-50-steps.json"
    else
        echo "gpu-check: vlmix has no --device yet; only the kernel checks travel"
    fi
    size=$(du -sm "$kit" | cut -f1)
    [ "$size" -lt 64 ] || { echo "gpu-check: $kit is $size MiB, over the 64 MiB that travels" >&2; exit 1; }
    echo "gpu-check: $kit ready ($size MiB): carry it with the working tree and run scripts/gpu-check.sh OUTDIR there"
    exit 0
fi

out="${1:-${OUT:-}}"
[ -n "$out" ] || { echo "usage: scripts/gpu-check.sh OUTDIR (or set OUT); scripts/gpu-check.sh --prepare first, here" >&2; exit 2; }
mkdir -p "$out"
log="$out/gpu-check.log"
exec > >(tee -a "$log") 2>&1
echo "gpu-check: $(date -u +%FT%TZ) in $PWD, results in $out"
[ -x "$kit/vlmix-cuda-check" ] || { echo "gpu-check: $kit/vlmix-cuda-check is missing: run scripts/gpu-check.sh --prepare on the build machine and carry $kit" >&2; exit 2; }

# pip's CUDA 13 wheels share nvidia/cu13/lib; older ones have nvidia/<library>/lib. Bare-name dlopen
# (cudarc) sees only LD_LIBRARY_PATH and the linker cache.
nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null || true)
if [ -n "$nvidia" ]; then
    libdirs=$(find "$nvidia" -mindepth 2 -maxdepth 2 -type d -name lib | sort | paste -sd:)
    export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu-check: nvidia wheels at $nvidia"
else
    echo "gpu-check: python3 has no 'nvidia' package; relying on the loader path as it is"
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/machine.txt" 2>&1
else
    echo "no nvidia-smi" >"$out/machine.txt"
fi
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >>"$out/machine.txt" 2>&1 || true
cat "$out/machine.txt"

checks="$out/checks.tsv"
: >"$checks"
# check NAME TIMEOUT_S RESULT_JSON CMD...: runs CMD, records its status, time and result file.
check() {
    local name=$1 limit=$2 result=$3
    shift 3
    echo
    echo "== $name: $*"
    local start=$SECONDS rc
    timeout "$limit" "$@"
    rc=$?
    [ $rc -eq 124 ] && echo "gpu-check: $name ran past ${limit}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$result" >>"$checks"
}
pending() { printf '%s\tpending\t0\t%s\n' "$1" "$2" >>"$checks"; }

bin="$kit/vlmix-cuda-check"
check probe 30 "" "$bin" probe
check "kernel parity f32" 120 "$out/parity-f32.json" \
    "$bin" parity --precision f32 --reference "$kit/cpu-reference.safetensors" --json "$out/parity-f32.json"
check "kernel parity bf16" 120 "$out/parity-bf16.json" \
    "$bin" parity --precision bf16 --reference "$kit/cpu-reference.safetensors" --json "$out/parity-bf16.json"
check "gemm rate" 120 "$out/gemm.json" "$bin" gemm --json "$out/gemm.json"
check "flash attention vs plain" 120 "$out/attention.json" "$bin" attention --json "$out/attention.json"

peak=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rates"]["Bf16 8192^3 TFLOP/s"])' "$out/gemm.json" 2>/dev/null || echo $DATASHEET_BF16_TFLOPS)
torch_bench() { # name model batch extra...
    local name=$1 model=$2 batch=$3
    shift 3
    check "pytorch $name" 300 "$out/torch-$name.json" python3 reference/bench_train.py --device cuda --model "$model" \
        --batch "$batch" --precision bf16 --steps 10 --warmup 3 --threads "$(nproc)" --peak-tflops "$peak" \
        --json "$out/torch-$name.json" "$@"
}
torch_bench 79m-eager openlm-79m $BATCH_79M
torch_bench 79m-compile openlm-79m $BATCH_79M --compile
torch_bench 1b-eager openlm-1b $BATCH_1B

# run_json NAME TIMEOUT FILE CMD...: a check whose command prints its JSON result on stdout.
run_json() {
    local name=$1 limit=$2 file=$3
    shift 3
    check "$name" "$limit" "$file" bash -c '"$@" >"$0"' "$file" "$@"
}
if [ -x "$kit/vlmix" ] && [ -f "$kit/cpu-50-steps.json" ]; then
    export LD_LIBRARY_PATH="$PWD/$kit/lib:$LD_LIBRARY_PATH"
    vlmix="$kit/vlmix"
    run_json "vlmix 50 steps cuda f32" 300 "$out/vlmix-50-f32.json" "$vlmix" bench train --device cuda --precision f32 "${STEPS_ARGS[@]}"
    run_json "vlmix 50 steps cuda bf16" 300 "$out/vlmix-50-bf16.json" "$vlmix" bench train --device cuda --precision bf16 "${STEPS_ARGS[@]}"
    check "vlmix loss after 50 steps vs cpu" 30 "$out/loss-vs-cpu.json" python3 - "$kit/cpu-50-steps.json" \
        "$out/vlmix-50-f32.json" "$out/vlmix-50-bf16.json" "$out/loss-vs-cpu.json" <<'PY'
import json, math, sys
cpu, f32, bf16 = (json.load(open(p))["final_loss"] for p in sys.argv[1:4])
scale = math.log(8192)  # the reference model's initial loss
result = {"cpu": cpu, "cuda_f32": f32, "cuda_bf16": bf16, "f32_abs_diff": abs(f32 - cpu), "bf16_diff_of_scale": abs(bf16 - cpu) / scale}
result["ok"] = result["f32_abs_diff"] <= 1e-3 and result["bf16_diff_of_scale"] <= 0.02
json.dump(result, open(sys.argv[4], "w"))
print(result)
sys.exit(0 if result["ok"] else 1)
PY
    bench() { # name model batch
        run_json "vlmix $1" 300 "$out/vlmix-$1.json" "$vlmix" bench train --device cuda --precision bf16 --model "$2" \
            --batch "$3" --steps 10 --warmup 3 --json
    }
    bench 79m openlm-79m $BATCH_79M
    bench 1b openlm-1b $BATCH_1B
else
    pending "vlmix 50 steps cpu vs cuda" "the carried vlmix has no --device (models not yet generic over Device)"
    pending "vlmix openlm-79m / openlm-1b throughput" "as above"
fi
pending "vlmix vlm cooldown step" "needs a prepared feature cache on the GPU machine"

python3 - "$checks" "$out/summary.json" "$out/machine.txt" "$DATASHEET_BF16_TFLOPS" <<'PY'
import json, sys
checks_path, summary_path, machine_path, datasheet = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
checks = []
for line in open(checks_path):
    name, rc, seconds, result = line.rstrip("\n").split("\t")
    entry = {"name": name, "seconds": int(seconds)}
    if rc == "pending":
        entry.update(status="pending", why=result)
    else:
        entry.update(status="ok" if rc == "0" else "failed", exit_code=int(rc))
        if result:
            try:
                data = json.load(open(result))
                if "outcomes" in data:  # keep the failures and the worst output, not every line
                    worst = max(data["outcomes"], key=lambda o: o["error"] / o["tolerance"])
                    data["worst"] = worst
                    data["failures"] = [o for o in data["outcomes"] if not o["ok"]]
                    del data["outcomes"]
                if "gflops" in data:
                    data["mfu_datasheet"] = round(data["gflops"] / 1e3 / datasheet, 4)
                entry["result"] = data
            except (OSError, ValueError) as e:
                entry["result_error"] = f"{result}: {e}"
    checks.append(entry)
def ok_result(name):
    return next((c.get("result") for c in checks if c["name"] == name and c["status"] == "ok"), None)

def ratio(a, b, key):
    return round(a[key] / b[key], 3) if a and b and key in a and key in b else None

vl79, vl1b = ok_result("vlmix 79m"), ok_result("vlmix 1b")
eager79, compile79, eager1b = ok_result("pytorch 79m-eager"), ok_result("pytorch 79m-compile"), ok_result("pytorch 1b-eager")
# The issue's bar, reported (a missed target is not a failed check).
bar = {
    "79m tokens/s vs pytorch eager (>= 1.0)": ratio(vl79, eager79, "tokens_per_s"),
    "79m tokens/s vs torch.compile (aim >= 1.0)": ratio(vl79, compile79, "tokens_per_s"),
    "1b MFU vs datasheet (>= 0.40)": round(vl1b["gflops"] / 1e3 / datasheet, 4) if vl1b else None,
    "79m peak memory vs pytorch (<= 1.0)": ratio(vl79, eager79, "peak_gpu_mb"),
    "1b peak memory vs pytorch (<= 1.0)": ratio(vl1b, eager1b, "peak_gpu_mb"),
}
summary = {
    "machine": open(machine_path).read().strip().splitlines(),
    "bar": bar,
    "datasheet_bf16_tflops": datasheet,
    "passed": sum(c["status"] == "ok" for c in checks),
    "failed": sum(c["status"] == "failed" for c in checks),
    "pending": sum(c["status"] == "pending" for c in checks),
    "checks": checks,
}
json.dump(summary, open(summary_path, "w"), indent=2)
print()
for c in checks:
    print(f"{c['status']:8} {c['name']} ({c['seconds']} s)")
print(f"gpu-check: {summary['passed']} passed, {summary['failed']} failed, {summary['pending']} pending; {summary_path}")
sys.exit(1 if summary["failed"] else 0)
PY
