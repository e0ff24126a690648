#!/usr/bin/env bash
# The one script to run on a GPU machine for the CUDA backend (issues 12, 24). Two halves:
#
#   scripts/gpu-check.sh --prepare     here (Rust, OpenBLAS, no GPU): builds vlmix-cuda-check and vlmix
#                                      (debug info stripped, symbols kept for backtraces), writes the CPU
#                                      engine's kernel outputs and loss curve, into target/gpu-check/ (the
#                                      folder to carry to the GPU machine, < 64 MiB)
#   scripts/gpu-check.sh [--quick] [--deadline SECONDS] [OUTDIR]
#                                      on the GPU machine (driver, python3 with PyTorch and pip's nvidia-*
#                                      wheels; no Rust, no network). OUTDIR defaults to $OUT.
#
# One call of a lent GPU is short (at most 10 minutes, 8 files back), so: one global deadline (default
# 360 s; --quick: 150 s, the essential checks only), each check capped at what is left, the most decisive
# checks first (kernel parity -> vlmix 50 steps -> vlmix throughput -> PyTorch eager -> torch.compile),
# and summary.json written on any exit, with every check that did not run named and why. OUTDIR gets four
# files: summary.json, gpu-check.log, machine.txt, details.tgz (every check's own JSON).
#
# Checks: the CUDA libraries load; every Device kernel on CUDA against the CPU engine's outputs (f32:
# normwise 1e-4; bf16: 3e-2 for outputs through a matrix product, 1e-4 for the rest), plain attention
# too; flash attention against the plain path; cuBLASLt GEMM TFLOP/s on f32 and bf16 operands (the
# measured MFU denominator); vlmix's first and 50th-step losses on CUDA against the CPU's; tokens/s, MFU
# and peak memory of vlmix and PyTorch (eager bf16 autocast, torch.compile) for openlm-79m and openlm-1b
# at seq 2048. Without a driver every GPU check is "not run: no device" (exit 3); a failed check exits 1.
# VLMIX_CUDA_SYNC=1 (waits after every launch, naming a faulting kernel) and RUST_BACKTRACE=1 are set.
set -uo pipefail
cd "$(dirname "$0")/.."
kit=${GPU_CHECK_KIT:-target/gpu-check}

# vlmix's own training-step check: the reference model on one fixed batch from the same seed (it
# memorises the batch: ~9.0 -> ~0.03 in 50 steps); compare-loss holds the bounds.
STEPS_ARGS=(--model reference --batch 8 --steps 50 --warmup 0 --json)
BATCH_79M=16
BATCH_1B=4
# Seconds kept back from the deadline for the summary and the archive.
RESERVE=15

if [ "${1:-}" = "--prepare" ]; then
    set -e
    # Where cargo puts the binaries (CARGO_TARGET_DIR when set).
    built="${CARGO_TARGET_DIR:-target}/release"
    cargo build --release -p vlmix-cuda-check --bin vlmix-cuda-check
    cargo build --release -p vlmix --bin vlmix
    rm -rf "$kit"
    mkdir -p "$kit/lib"
    # Symbols stay, so a panic's backtrace names functions; DWARF goes (tens of MiB).
    strip --strip-debug -o "$kit/vlmix-cuda-check" "$built"/vlmix-cuda-check
    strip --strip-debug -o "$kit/vlmix" "$built"/vlmix
    "$kit/vlmix-cuda-check" reference "$kit/cpu-reference.safetensors"
    # vlmix's shared libraries beyond glibc (Open MPI, fontconfig, ...), which the GPU machine may lack;
    # the run appends them to vlmix's own loader path only.
    ldd "$built"/vlmix | awk '/=> \//{print $3}' |
        grep -Ev '/(libc|libm|libgcc_s|libpthread|libdl|librt|libstdc\+\+)\.so' | xargs -r cp -L -t "$kit/lib"
    echo "gpu-check: the CPU's losses over 50 steps of the reference model"
    "$built"/vlmix bench train --device cpu "${STEPS_ARGS[@]}" >"$kit/cpu-50-steps.json"
    size=$(du -sm "$kit" | cut -f1)
    [ "$size" -lt 64 ] || { echo "gpu-check: $kit is $size MiB, over the 64 MiB that travels" >&2; exit 1; }
    echo "gpu-check: $kit ready ($size MiB): carry it with the working tree and run scripts/gpu-check.sh OUTDIR there"
    exit 0
fi

quick=0
deadline=
out=${OUT:-}
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --deadline) deadline=${2:?--deadline needs seconds}; shift ;;
        -*) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
[ -n "$deadline" ] || deadline=$([ $quick = 1 ] && echo 150 || echo 360)
[ -n "$out" ] || { echo "usage: scripts/gpu-check.sh [--quick] [--deadline SECONDS] OUTDIR (or set OUT); scripts/gpu-check.sh --prepare first, here" >&2; exit 2; }
mkdir -p "$out"
end_at=$((SECONDS + deadline))
# Every check's own files go here and travel back as one archive.
work=$(mktemp -d)
checks="$work/checks.tsv"
: >"$checks"
bin="$kit/vlmix-cuda-check"
vlmix="$kit/vlmix"
export RUST_BACKTRACE=1 VLMIX_CUDA_SYNC=1

# Every check in the order it runs; the summary lists them all, run or not.
planned=("probe" "kernel parity f32" "kernel parity bf16" "flash attention vs plain" "gemm rate"
    "vlmix 50 steps cuda f32" "vlmix 50 steps cuda bf16" "vlmix loss vs cpu" "vlmix 79m" "vlmix 1b"
    "pytorch 79m-eager" "pytorch 1b-eager" "pytorch 79m-compile" "vlmix vlm cooldown step")
skip_reason=  # set once no later check can run (no device, no kit)
stop_reason="the script was interrupted"

recorded() { cut -f1 "$checks" | grep -qxF -- "$1"; }
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$checks"; }

# Writes summary.json (every planned check, run or not) and the archive; runs on any exit.
finish() {
    local rc=$? name
    trap - EXIT
    for name in "${planned[@]}"; do
        recorded "$name" || record "$name" "not run" 0 "$stop_reason"
    done
    if [ -x "$bin" ]; then
        "$bin" summary "$checks" "$out/machine.txt" "$out/summary.json"
    else
        { printf '{"error": "%s is missing", "checks": [' "$bin"
          awk -F'\t' '{printf "%s{\"name\": \"%s\", \"status\": \"not run\", \"why\": \"%s\"}", NR > 1 ? ", " : "", $1, $4}' "$checks"
          printf ']}\n'; } >"$out/summary.json"
    fi
    tar -czf "$out/details.tgz" -C "$work" . && rm -rf "$work"
    echo "gpu-check: done in $SECONDS s of $deadline; results in $out"
    exit "$rc"
}
trap finish EXIT
trap 'stop_reason="stopped by a signal"; exit 143' TERM INT

exec > >(tee -a "$out/gpu-check.log") 2>&1
echo "gpu-check: $(date -u +%FT%TZ) in $PWD, deadline ${deadline}s$([ $quick = 1 ] && echo ', --quick'), results in $out"

# check NAME CAP_S RESULT_JSON CMD...: runs CMD under min(CAP_S, what is left of the deadline) and
# records its status, time and result file.
check() {
    local name=$1 cap=$2 result=$3
    shift 3
    if [ -n "$skip_reason" ]; then
        record "$name" "not run" 0 "$skip_reason"
        return
    fi
    local left=$((end_at - SECONDS - RESERVE))
    if [ "$left" -lt 5 ]; then
        record "$name" "not run" 0 "deadline reached"
        return
    fi
    [ "$cap" -lt "$left" ] || cap=$left
    echo
    echo "== $name (at most ${cap}s): $*"
    local start=$SECONDS rc
    timeout -k 5 "$cap" "$@"
    rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "gpu-check: $name ran past ${cap}s"
    record "$name" "$rc" "$((SECONDS - start))" "$result"
}
# run_json NAME CAP FILE CMD...: a check whose command prints its JSON result on stdout.
run_json() {
    local name=$1 cap=$2 file=$3
    shift 3
    check "$name" "$cap" "$file" bash -c '"$@" >"$0"' "$file" "$@"
}
quick_skip() { [ $quick = 1 ] && record "$1" "not run" 0 "--quick"; }

[ -x "$bin" ] || { stop_reason="$bin is missing: run scripts/gpu-check.sh --prepare on the build machine and carry $kit"; echo "gpu-check: $stop_reason" >&2; exit 2; }

# pip's CUDA 13 wheels share nvidia/cu13/lib, older ones have nvidia/<library>/lib; `nvidia` is a
# namespace package there (no __init__.py: __file__ is None, __path__ holds). Bare-name dlopen (cudarc)
# sees only LD_LIBRARY_PATH and the linker cache; the toolkit's lib64 comes last.
nvidia=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
libdirs=
if [ -n "$nvidia" ] && [ -d "$nvidia" ]; then
    libdirs=$(find "$nvidia" -mindepth 2 -maxdepth 2 -type d -name lib | sort | paste -sd:)
    echo "gpu-check: nvidia wheels at $nvidia"
else
    echo "gpu-check: python3 has no 'nvidia' package"
fi
[ -d /usr/local/cuda/lib64 ] && libdirs="${libdirs:+$libdirs:}/usr/local/cuda/lib64"
[ -n "$libdirs" ] && export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu-check: LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
echo "gpu-check: the linker cache's CUDA libraries:"
{ ldconfig -p 2>/dev/null || true; } | grep -E 'libcuda\.|nvrtc|cublas|nccl' || echo "  none"

{
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    else
        echo "no nvidia-smi"
    fi
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 || echo "no torch"
} >"$out/machine.txt"
cat "$out/machine.txt"

# Without the driver there is no device: every GPU check is "not run: no device".
probe_log="$work/probe.txt"
"$bin" probe 2>&1 | tee "$probe_log"
probe_rc=${PIPESTATUS[0]}
if grep -q 'missing: libcuda.so.1' "$probe_log"; then
    skip_reason="no device"
    record "probe" "not run" 0 "no device (libcuda.so.1, the driver, is not on this machine)"
else
    record "probe" "$probe_rc" 0 ""
fi

ref="$kit/cpu-reference.safetensors"
check "kernel parity f32" 150 "$work/parity-f32.json" "$bin" parity --precision f32 --reference "$ref" --json "$work/parity-f32.json"
quick_skip "kernel parity bf16" ||
    check "kernel parity bf16" 120 "$work/parity-bf16.json" "$bin" parity --precision bf16 --reference "$ref" --json "$work/parity-bf16.json"
quick_skip "flash attention vs plain" ||
    check "flash attention vs plain" 90 "$work/attention.json" "$bin" attention --json "$work/attention.json"
check "gemm rate" 60 "$work/gemm.json" "$bin" gemm --json "$work/gemm.json"

# vlmix with the kit's libraries after the machine's own (the kit's Debian libexpat / libz must not
# shadow the image's for anything else, python3 included).
kit_lib="$PWD/$kit/lib"
vlmix_run=(env "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$kit_lib" "$vlmix")
if [ -z "$skip_reason" ] && { [ ! -x "$vlmix" ] || [ ! -f "$kit/cpu-50-steps.json" ]; }; then
    vlmix_missing="the kit has no vlmix or cpu-50-steps.json: rerun scripts/gpu-check.sh --prepare"
else
    vlmix_missing=
fi
vlmix_check() { # NAME CAP FILE ARGS...: a vlmix bench train check
    local name=$1 cap=$2 file=$3
    shift 3
    if [ -n "$vlmix_missing" ]; then record "$name" "not run" 0 "$vlmix_missing"; return; fi
    run_json "$name" "$cap" "$file" "${vlmix_run[@]}" bench train --device cuda "$@"
}
vlmix_check "vlmix 50 steps cuda f32" 90 "$work/vlmix-50-f32.json" --precision f32 "${STEPS_ARGS[@]}"
vlmix_check "vlmix 50 steps cuda bf16" 90 "$work/vlmix-50-bf16.json" --precision bf16 "${STEPS_ARGS[@]}"
if [ -n "$vlmix_missing" ]; then
    record "vlmix loss vs cpu" "not run" 0 "$vlmix_missing"
else
    check "vlmix loss vs cpu" 10 "$work/loss-vs-cpu.json" "$bin" compare-loss "$kit/cpu-50-steps.json" \
        "$work/vlmix-50-f32.json" "$work/vlmix-50-bf16.json" "$work/loss-vs-cpu.json"
fi
vlmix_check "vlmix 79m" 90 "$work/vlmix-79m.json" --precision bf16 --model openlm-79m --batch $BATCH_79M --steps 10 --warmup 3 --json
quick_skip "vlmix 1b" ||
    vlmix_check "vlmix 1b" 120 "$work/vlmix-1b.json" --precision bf16 --model openlm-1b --batch $BATCH_1B --steps 5 --warmup 2 --json

# The measured bf16 GEMM rate is the MFU denominator PyTorch reports against.
peak=$(grep -o '"Bf16 8192^3 TFLOP/s": *[0-9.]*' "$work/gemm.json" 2>/dev/null | grep -o '[0-9.]*$' || true)
torch_bench() { # NAME CAP MODEL BATCH STEPS extra...
    local name=$1 cap=$2 model=$3 batch=$4 steps=$5
    shift 5
    check "pytorch $name" "$cap" "$work/torch-$name.json" python3 reference/bench_train.py --device cuda --model "$model" \
        --batch "$batch" --precision bf16 --steps "$steps" --warmup 3 --threads "$(nproc)" ${peak:+--peak-tflops "$peak"} \
        --json "$work/torch-$name.json" "$@"
}
torch_bench 79m-eager 90 openlm-79m $BATCH_79M 10
quick_skip "pytorch 1b-eager" || torch_bench 1b-eager 120 openlm-1b $BATCH_1B 5
quick_skip "pytorch 79m-compile" || torch_bench 79m-compile 180 openlm-79m $BATCH_79M 10 --compile
if [ -n "$skip_reason" ]; then
    record "vlmix vlm cooldown step" "not run" 0 "$skip_reason"
else
    record "vlmix vlm cooldown step" "pending" 0 "needs a prepared feature cache on the GPU machine"
fi

awk -F'\t' '$2 ~ /^[0-9]+$/ && $2 != 0 { failed = 1 } END { exit !failed }' "$checks" && exit 1
[ "$skip_reason" = "no device" ] && exit 3
exit 0
