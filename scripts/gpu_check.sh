#!/usr/bin/env bash
# One pass on a GPU machine: build, hold the wgpu path to the CPU/PyTorch references, time.
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# 1. builds the tests and the bench example with the `wgpu` feature;
# 2. runs the kernel and backend tests (wgpu results against the composed path and against
#    the PyTorch fixtures) on the machine's GPU adapter;
# 3. times the norm layers on wgpu (fused vs composed, eval and training steps);
# 4. times the models on wgpu at batch 32 and, when PyTorch with CUDA is installed, PyTorch
#    CUDA eager in the same run (`scripts/compare.py`), writing the Markdown table to
#    OUT_DIR/gpu.md.
# Each step logs to OUT_DIR; a failed step does not stop the later ones.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/ibn-gpu}}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ibn-target}"
features="wgpu autodiff"

step() {
    local name="$1"
    shift
    echo "== $name"
    local start=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc, $((SECONDS - start)) s (log: $out/$name.log)"
    tail -n 15 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step build cargo build --release --features "$features" --tests --examples --benches
step tests cargo test --release --features "$features" --test fused --test backends --test parity
step norms cargo bench --features "$features" --bench ibn -- --device wgpu --filter "norm" --iters 20
step ibn-layers cargo bench --features "$features" --bench ibn -- --device wgpu --filter "ibn layer" --iters 20
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    step models python3 scripts/compare.py --features "$features" --device wgpu \
        --torch-device cuda --batches 32 --models resnet50_ibn_a,resnet50_ibn_b \
        --iters 20 --out "$out/gpu.md"
else
    step models cargo run --release --features "$features" --example bench -- \
        --device wgpu --models resnet50_ibn_a,resnet50_ibn_b --batches 32 --iters 20
fi
