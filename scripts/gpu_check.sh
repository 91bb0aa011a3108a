#!/usr/bin/env bash
# One pass on a GPU machine: hold the wgpu path to the CPU/PyTorch references, then time.
#
#   bash scripts/gpu_check.sh [OUT_DIR]              # builds with cargo, then runs
#   bash scripts/gpu_check.sh --pack DIR             # builds, copies the binaries to DIR
#   IBN_BIN_DIR=DIR bash scripts/gpu_check.sh [OUT]  # runs binaries packed earlier
#
# The last form is for a GPU machine without a Rust toolchain: pack on a machine with one
# (same architecture, a glibc no newer than the GPU machine's), copy DIR over, run there.
# The packed test binaries read their fixtures from the checkout this script runs in.
#
# 1. runs the kernel, convolution, backend, PyTorch-parity and training tests; every backend
#    compiled in (flex, ndarray, wgpu on the machine's GPU adapter) is held to the composed
#    path, to a float64 convolution and to the PyTorch fixtures, and the backend and training
#    tests compare wgpu's outputs and parameter gradients with the CPU's;
# 2. times resnet50_ibn_a/b at batch 32 (and the training step at batch 8) on wgpu and,
#    when PyTorch with CUDA is installed, PyTorch CUDA eager in the same run
#    (`scripts/compare.py`), writing the Markdown tables to OUT_DIR/gpu.md (PyTorch's
#    defaults: cuDNN may use TF32) and OUT_DIR/gpu-fp32.md (TF32 off, float32 like wgpu);
# 3. times the same models in evaluation with burn's convolutions instead of the unfolded
#    matrix products (`--gpu-conv burn`, OUT_DIR/models-wgpu-burn-conv.log), and profiles one
#    batch-32 resnet50_ibn_a pass kernel by kernel (OUT_DIR/kernel-profile.md, with the
#    convolution algorithms burn's autotuning tried; `scripts/kernel_profile.py`);
# 4. times the norm and IBN layers on wgpu (fused vs composed, eval and training steps);
# 5. last, as burn's autotuning of its training convolutions has outlasted a step's limit,
#    times the training step with burn's convolutions (OUT_DIR/train-wgpu-burn-conv.log).
# Each step logs to OUT_DIR and runs under a time limit (STEP_TIMEOUT seconds, default
# 300); a failed step does not stop the later ones. With BUDGET (seconds) the whole run also
# ends within that time: each step gets at most what is left of it, and the steps that no
# longer fit are skipped (the order above is the order of importance). Binaries missing from
# IBN_BIN_DIR fail their steps only. GPU use is sampled to OUT_DIR/smi.csv.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ibn-target}"
features="${IBN_FEATURES:-ndarray wgpu autodiff}" # cargo features of the build (e.g. "vulkan autodiff")
tests=(conv training backends fused parity) # the GPU convolution kernels first

# Paths of the binaries this script runs, as `kind name path` lines from cargo's JSON.
built_binaries() {
    cargo build --release --features "$features" --tests --examples --benches \
        --message-format=json |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("reason") == "compiler-artifact" and r.get("executable"):
        print(r["target"]["kind"][0], r["target"]["name"], r["executable"])'
}

if [[ "${1:-}" == "--pack" ]]; then
    dir="${2:?--pack needs a folder}"
    mkdir -p "$dir"
    while read -r kind name path; do
        case "$kind:$name" in
        test:*) if [[ " ${tests[*]} " == *" $name "* ]]; then cp "$path" "$dir/$name"; fi ;;
        example:bench) cp "$path" "$dir/bench" ;;
        bench:ibn) cp "$path" "$dir/layer_bench" ;;
        esac
    done < <(built_binaries)
    strip "$dir"/* 2>/dev/null || true
    ls -l "$dir"
    exit 0
fi

out="${1:-${OUT:-/tmp/ibn-gpu}}"
mkdir -p "$out"
limit="${STEP_TIMEOUT:-300}"
budget="${BUDGET:-0}" # seconds for the whole run; 0: no limit

step() {
    local name="$1"
    shift
    local step_limit=$limit
    if ((budget > 0)); then
        local left=$((budget - SECONDS))
        if ((left < 10)); then
            echo "== $name: skipped, ${left} s of the budget left"
            return
        fi
        ((left < step_limit)) && step_limit=$left
    fi
    echo "== $name (limit $step_limit s)"
    local start=$SECONDS
    timeout "$step_limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc, $((SECONDS - start)) s (log: $out/$name.log)"
    tail -n 8 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
    >"$out/smi.csv" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT

if [[ -n "${IBN_BIN_DIR:-}" ]]; then
    bin="$IBN_BIN_DIR"
    export CARGO_MANIFEST_DIR="$PWD" # where the test binaries find tests/fixtures
else
    bin="$out/bin"
    mkdir -p "$bin"
    echo "== build"
    bash "$0" --pack "$bin" >"$out/build.log" 2>&1 || tail -n 20 "$out/build.log"
fi

for t in "${tests[@]}"; do
    step "test-$t" "$bin/$t"
done
models=(--models resnet50_ibn_a,resnet50_ibn_b --batches 32 --iters 20)
step models-wgpu "$bin/bench" --device wgpu "${models[@]}" --json
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    compare() { # compare STEP_NAME [compare.py options]: PyTorch CUDA against models-wgpu
        local name="$1"
        shift
        step "$name" python3 scripts/compare.py --rust-json "$out/models-wgpu.log" \
            --torch-device cuda "${models[@]}" "$@"
    }
    compare models-compare --out "$out/gpu.md"
    compare models-compare-fp32 --no-tf32 --out "$out/gpu-fp32.md"
fi
step models-wgpu-burn-conv "$bin/bench" --device wgpu "${models[@]}" --json --no-train \
    --gpu-conv burn
profile_dir=/tmp/cubecl-profile # where scripts/cubecl-profile.toml sends the logs
rm -rf "$profile_dir"
cp scripts/cubecl-profile.toml cubecl.toml
step kernel-profile-run "$bin/bench" --device wgpu --models resnet50_ibn_a --batches 32 \
    --iters 3 --no-train
rm -f cubecl.toml
if [[ -f "$profile_dir/profile.log" ]]; then
    python3 scripts/kernel_profile.py "$profile_dir/profile.log" \
        --autotune "$profile_dir/autotune.log" >"$out/kernel-profile.md" 2>&1
    head -n 16 "$out/kernel-profile.md"
fi
# The norm and IBN layers (criterion; names matching `norm`, training steps included).
step norms env IBN_BENCH_DEVICE=wgpu "$bin/layer_bench" --bench norm --sample-size 10 \
    --warm-up-time 1 --measurement-time 2
step train-wgpu-burn-conv "$bin/bench" --device wgpu --models resnet50_ibn_a --batches 1 \
    --iters 20 --json --gpu-conv burn
