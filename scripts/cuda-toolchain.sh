#!/usr/bin/env bash
# Install a CUDA toolkit from PyPI wheels into PREFIX, enough for
# `cargo build --features cuda` on a machine with no GPU and no system CUDA, and print the
# environment to export.
#
#   scripts/cuda-toolchain.sh PREFIX            # e.g. /work/cuda-toolchain
#   eval "$(scripts/cuda-toolchain.sh PREFIX)"  # install (idempotent) and export in one go
#
# Knobs (environment):
#   CUDA_TOOLKIT_VERSION  version of PyPI's `cuda-toolkit` metapackage (default 13.0.2). Only the
#                         CUDA 13 wheels ship a full nvcc (nvidia-cuda-nvcc-cu12 has ptxas only).
#                         candle loads its kernels as PTX, which the driver must understand: pick
#                         a version no newer than the GPU driver's CUDA version (nvidia-smi).
#   CUDA_COMPUTE_CAP      what candle-kernels compiles for (default 80: PTX for sm_80 JITs on
#                         Ampere, Hopper and newer; 90 gives sm_90a, which runs on Hopper only).
#
# What it does: pip-installs nvcc, nvvm (cicc), crt headers, cudart, nvrtc, cublas(Lt), curand
# and cccl into PREFIX/nvidia/cu13 (one CUDA_HOME-shaped tree); adds the unversioned
# lib*.so links the linker wants; and, since no wheel ships libcuda.so, builds a link-time stub
# PREFIX/nvidia/cu13/lib/stubs/libcuda.so (soname libcuda.so.1, every driver entry point of
# cuda.h returning CUDA_ERROR_STUB_LIBRARY). The binary then needs the real driver's
# libcuda.so.1 at run time; never put lib/stubs on LD_LIBRARY_PATH on a machine with a GPU.
# Progress goes to stderr; stdout carries only the export lines.
#
# Then (2 cores: ~20 min cold, ~11 of them nvcc; build the CLI alone, it brings the engine):
#   CARGO_TARGET_DIR=/work/cuda-target nice -n 19 cargo build -p tarflow-cli --features cuda
# To run the binary where there is no driver (CPU only), give it the stub as libcuda.so.1:
#   mkdir -p /tmp/nogpu && ln -sf "$CUDA_HOME/lib/stubs/libcuda.so" /tmp/nogpu/libcuda.so.1
#   LD_LIBRARY_PATH=/tmp/nogpu:$LD_LIBRARY_PATH tarflow sample --device cpu ...
set -euo pipefail

prefix=${1:?usage: $0 PREFIX}
ver=${CUDA_TOOLKIT_VERSION:-13.0.2}
cap=${CUDA_COMPUTE_CAP:-80}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
root=$prefix/nvidia/cu13
mm=$(echo "$ver" | cut -d. -f1,2)

if [ ! -x "$root/bin/nvcc" ] || [ ! -f "$prefix/.cuda-toolkit-$ver" ]; then
    echo "installing cuda-toolkit $ver from PyPI into $prefix" >&2
    # nvidia-cuda-nvcc leaves nvvm and crt unpinned: hold them to the same release.
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
        --upgrade --target "$prefix" \
        "cuda-toolkit[nvcc,cudart,nvrtc,cublas,curand,cccl]==$ver" \
        "nvidia-nvvm==$mm.*" "nvidia-cuda-crt==$mm.*" >&2
    touch "$prefix/.cuda-toolkit-$ver"
fi
[ -x "$root/bin/nvcc" ] || { echo "no nvcc in $root/bin after install" >&2; exit 1; }

# The wheels ship only versioned libraries (libcudart.so.13...); `-lcudart` needs libcudart.so.
for lib in cudart nvrtc cublas cublasLt curand; do
    so=$(cd "$root/lib" && ls "lib$lib.so."* 2>/dev/null | grep -v builtins | sort | head -n1 || true)
    [ -n "$so" ] || { echo "lib$lib.so.* missing from $root/lib" >&2; exit 1; }
    ln -sfn "$so" "$root/lib/lib$lib.so"
done

# Link-time stub for the driver library (cudarc links -lcuda).
if [ ! -f "$root/lib/stubs/libcuda.so" ]; then
    mkdir -p "$root/lib/stubs"
    tmp=$(mktemp -d)
    for defs in "" "-D__CUDA_API_PER_THREAD_DEFAULT_STREAM=1" "-D__CUDA_API_VERSION_INTERNAL"; do
        # shellcheck disable=SC2086
        cc -E -P $defs -I "$root/include" "$root/include/cuda.h"
    done | { tr '\n' ' '; echo " CUresult cuProfilerInitialize( CUresult cuProfilerStart( CUresult cuProfilerStop("; } | tr '\n' ' ' | grep -oE '\bCUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/CUresult +//; s/ *\($//' \
        | sort -u | sed 's/.*/int &(void) { return 34; }/' > "$tmp/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$tmp/stub.c"
    echo "stub libcuda.so: $(wc -l < "$tmp/stub.c") entry points" >&2
    rm -rf "$tmp"
fi

cat <<EOF
export CUDA_HOME=$root
export CUDA_PATH=$root
export PATH=$root/bin:\$PATH
export CUDA_COMPUTE_CAP=$cap
export LD_LIBRARY_PATH=$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF
