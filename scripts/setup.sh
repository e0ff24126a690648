#!/usr/bin/env bash
# Installs what vlmix needs from the system, idempotently: OpenBLAS (loaded at run time by the
# engine), fontconfig (plot labels), Open MPI with libclang (the `mpi` crate's bindings are generated
# by bindgen at build time; data-parallel training), and Slurm with munge (the Slurm executor's tests
# start a one-node cluster with scripts/slurm-local.sh). Safe to run repeatedly; does nothing when
# all is present.
set -euo pipefail
need=()
for pkg in libopenblas0-pthread fontconfig fonts-dejavu-core libfontconfig1-dev pkg-config \
    libopenmpi-dev openmpi-bin libclang-dev slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
