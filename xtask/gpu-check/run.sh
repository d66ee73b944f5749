#!/usr/bin/env bash
# Temper's GPU check, made by `cargo xtask gpu-check`. ONE command on the GPU machine:
#
#     bash run.sh [OUT_DIR]          (default OUT_DIR: results/ beside this script)
#
# Needs no Rust and no network: python3 with torch (and its nvidia.cudnn package, whose cuDNN 9
# the binary loads), and the CUDA 13 libraries under /usr/local/cuda. At most 8 minutes: each
# part runs under its own time limit, and a part that fails or runs out of time is recorded
# without stopping the others. Everything lands in OUT_DIR; OUT_DIR/results.json is the
# summary (with the acceptance checks of issue 14), the other files are each part's JSON
# (stdout) and log (stderr).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" >&2; }

# cuDNN 9 from PyTorch's environment, CUDA 13 from /usr/local/cuda.
CUDNN_LIB="$("$PY" -c "import nvidia.cudnn,os;print(os.path.join(list(nvidia.cudnn.__path__)[0],'lib'))" 2>/dev/null || true)"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${CUDNN_LIB:+:$CUDNN_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

BIN="$OUT/temper"
"$PY" -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
  "$HERE/temper-cuda.xz" "$BIN" && chmod +x "$BIN" || log "cannot unpack temper-cuda.xz"

# step NAME LIMIT_S COMMAND...: stdout to NAME.json, stderr to NAME.log, and one line
# "NAME exit seconds limit" in steps.tsv (exit 124 or 137: out of time).
step() {
  local name=$1 limit=$2 s rc
  shift 2
  s=$(date +%s)
  log "$name (limit ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" "$limit" >> "$OUT/steps.tsv"
  log "$name: exit $rc after $(( $(date +%s) - s ))s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
  > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" \
  > "$OUT/torch.txt" 2>&1 || true

step info 10 "$BIN" info --json
# (a) every kernel against the CPU reference, both gradients, f32/tf32/bf16 tolerances.
step kernels 45 "$BIN" gpu-check --device cuda --parts kernels --json
# (b) whole models: logits and gradients against the CPU.
step models 55 "$BIN" gpu-check --device cuda --parts models --models preact-resnet18,mobilenet-v2 --json
# PGD-20 robust accuracy of a trained small-cnn (MNIST) on the bundled test split: CPU and GPU.
ATTACK=(attack -m small-cnn -w "$HERE/small_cnn_mnist.safetensors" --attacks pgd-20 --eps 0.1 --json)
step robust_cpu 30 "$BIN" "${ATTACK[@]}" --device cpu
step robust_cuda 25 "$BIN" "${ATTACK[@]}" --device cuda
step robust_cuda_bf16 25 "$BIN" "${ATTACK[@]}" --device cuda --precision bf16
# (c) the benchmark beside PyTorch on the same GPU; configurations not started after the
# deadline are listed as skipped (preact-resnet18 at batch 512 first: the acceptance case).
step bench 175 "$BIN" gpu-check --device cuda --parts bench --models preact-resnet18,mobilenet-v2 \
  --batches 512,128 --precisions f32,tf32,bf16 --reps 5 --deadline-s 120 \
  --torch-script "$HERE/bench_steps.py" --python "$PY" --json
# (d) the demo end to end on the GPU.
step demo 95 "$BIN" demo --device cuda --json --out "$OUT/demo"

"$PY" "$HERE/summarize.py" "$OUT" > "$OUT/results.json" 2> "$OUT/summarize.log" \
  || log "summarize.py failed: see $OUT/summarize.log"
cat "$OUT/summarize.log" >&2
log "done: $OUT/results.json"
