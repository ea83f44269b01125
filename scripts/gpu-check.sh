#!/usr/bin/env bash
# The GPU check (issue 17): on a machine with an NVIDIA GPU, in under 8 minutes,
#   1. builds the engine with `--features cuda` (release; installs nvcc with
#      scripts/cuda-toolchain.sh when none is on PATH),
#   2. runs the golden suites and the host-sync counts with TARFLOW_TEST_DEVICE=cuda,
#   3. times the DESIGN.md section 5 S16 workloads (sampling at batch 1 and 64, cached vs
#      Jacobi; one training step) on CUDA and on the CPU, and prints one Markdown table
#      (engine/examples/device_timing.rs).
#
#   scripts/gpu-check.sh                       # the GPU check
#   scripts/gpu-check.sh --cpu-only            # the same on the CPU alone (no CUDA build)
#   scripts/gpu-check.sh --cpu-only --quick --no-tests   # smoke test of the script: CPU timings
#                                                         # at small batches, one run each
# Options:
#   --cpu-only   no GPU: build without CUDA, tests and timings on the CPU
#   --quick      1 timed run per workload, batch 8 instead of 64, training batch 8
#   --no-tests   skip step 2
# Environment:
#   CUDA_TOOLCHAIN_PREFIX  where scripts/cuda-toolchain.sh installs nvcc (default ~/cuda-toolchain)
#   GPU_CHECK_DEVICE       the CUDA device (default cuda:0)
#   GPU_CHECK_REPS         timed runs per workload (default 3)
#   RAYON_NUM_THREADS      CPU threads of the CPU column (default: all cores)
# Exits non-zero when any step fails; the table goes to stdout, progress to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."

cpu_only=0
quick=0
tests=1
for arg in "$@"; do
    case "$arg" in
        --cpu-only) cpu_only=1 ;;
        --quick) quick=1 ;;
        --no-tests) tests=0 ;;
        -h | --help)
            sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu-check: unknown option '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done

log() { echo "gpu-check: $*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

gpu=${GPU_CHECK_DEVICE:-cuda:0}
reps=${GPU_CHECK_REPS:-3}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$(nproc)}
timing_args=(--reps "$reps")
if [ "$quick" = 1 ]; then
    timing_args=(--reps 1 --large 8 --train-batch 8)
fi

if [ "$cpu_only" = 1 ]; then
    features=()
    test_device=cpu
    devices=cpu
else
    command -v nvidia-smi > /dev/null \
        || die "no nvidia-smi: this check needs an NVIDIA GPU and its driver (--cpu-only runs the CPU part)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader >&2 \
        || die "nvidia-smi cannot query the GPU"
    if ! command -v nvcc > /dev/null; then
        prefix=${CUDA_TOOLCHAIN_PREFIX:-$HOME/cuda-toolchain}
        log "no nvcc on PATH: installing CUDA's compiler into $prefix (scripts/cuda-toolchain.sh)"
        env_lines=$(scripts/cuda-toolchain.sh "$prefix") || die "scripts/cuda-toolchain.sh $prefix"
        eval "$env_lines"
    fi
    log "nvcc: $(nvcc --version | tail -n1)"
    features=(--features cuda)
    test_device=$gpu
    devices=$gpu,cpu
fi

cargo_args=(--release -p tarflow "${features[@]}")
suites=(--test golden_forward --test golden_reverse --test gradients --test host_syncs)

log "[1/3] building (${features[*]:-cpu only}, release) at $(elapsed)s"
if [ "$tests" = 1 ]; then
    cargo test "${cargo_args[@]}" "${suites[@]}" --no-run || die "build of the test suites"
fi
cargo build "${cargo_args[@]}" --example device_timing || die "build of the timing example"

if [ "$tests" = 1 ]; then
    log "[2/3] golden suites with TARFLOW_TEST_DEVICE=$test_device at $(elapsed)s"
    test_log=$(mktemp)
    trap 'rm -f "$test_log"' EXIT
    ok=1
    TARFLOW_TEST_DEVICE=$test_device cargo test "${cargo_args[@]}" "${suites[@]}" \
        -- --nocapture > "$test_log" 2>&1 || ok=0
    grep -E "^test result|host round trips" "$test_log" >&2 || true
    if [ "$ok" = 0 ]; then
        grep -E "panicked|FAILED|^error" "$test_log" | head -n 40 >&2 || tail -n 40 "$test_log" >&2
        die "golden suites on $test_device (rerun: TARFLOW_TEST_DEVICE=$test_device cargo test ${cargo_args[*]} ${suites[*]})"
    fi
else
    log "[2/3] tests skipped (--no-tests)"
fi

log "[3/3] timing on $devices (RAYON_NUM_THREADS=$RAYON_NUM_THREADS) at $(elapsed)s"
cargo run -q "${cargo_args[@]}" --example device_timing -- --devices "$devices" "${timing_args[@]}" \
    || die "timing on $devices"

total=$(elapsed)
log "done in ${total}s"
if [ "$total" -gt 480 ]; then
    log "warning: over the 8-minute budget (${total}s); GPU_CHECK_REPS=1 or --no-tests shortens it"
fi
