#!/usr/bin/env bash
# The one script to run on a GPU machine (issue 14): the GPU tests, the one-cell benchmark against
# BIDL-style eager and SpikingJelly, the state hop, fps_scaling --backend cuda (1, 2, 4, 6 cells on one
# GPU), then, while time is left, the T=48 / B=16 cell figures and the 16-core cpu scaling curve.
# Everything lands in $OUT (default benchmarks/results/gpu/run); the script ends within BUDGET_S
# seconds (default 500): a stage starts only if its minimum fits, and runs under `timeout`.
#
# Prepare on the development machine, from the repo root (nothing can be fetched on the GPU machine):
#   bash /work/shared/tools/gpu_carry_bundle.sh                   # .gpu_carry/: Ray 2.60 for Python 3.12
#   mkdir -p .whl && python3 -m pip download --no-deps --only-binary=:all: -d .whl spikingjelly==2.0.0
# Run it with the device tool: command "bash benchmarks/gpu/check.sh", carry [".gpu_carry", ".whl"],
# timeout_s 560. Then copy the returned files into benchmarks/results/gpu/ and commit them.
# STAGES="tests cell scale_cuda cell_more scale_cpu" (default: all, in that order) picks stages. With the
# default budget the first three fit (about 7 minutes); a second call with STAGES="cell_more scale_cpu"
# (BUDGET_S=480) gives the T=48 / B=16 cell figures and the 16-core cpu curve.
# SMOKE=1: every stage at toy size on CPU (no GPU needed): checks this script's plumbing.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-500}
OUT=${OUT:-$PWD/benchmarks/results/gpu/run}
STAGES=${STAGES:-"tests cell scale_cuda cell_more scale_cpu"}
SMOKE=${SMOKE:-0}
CAPX=1                      # stage limits x CAPX (the toy stages on a 2-core CPU take longer than on the GPU machine)
if [ "$SMOKE" = 1 ]; then
  CAPX=5
  S=(--smoke); CELL=(--configs 2x1 --chunk-compile eager --iters 1); MORE=(--configs 2x2 --chunk-compile eager --iters 1)
  TESTS="transport_host or credits_and_event"; FPS_CUDA=(--smoke); FPS_CPU=(--smoke)
else
  S=(); CELL=(--configs 10x1); MORE=(--configs 48x1,10x16 --chunk-compile graphs)
  TESTS="gpu_roundtrip or cuda_context_matches or cuda_grid_equals"
  FPS_CUDA=(--devices 1,2,4,6 --T 10 --samples 40); FPS_CPU=(--model resnetlif18 --devices 1,2,4,8,12 --T 48)
fi
mkdir -p "$OUT"
LOG="$OUT/check.log"
WORK=${CHECK_WORK:-/tmp/bidl-gpu-check}   # kept between calls on a warm machine: artifacts, caches, key
rm -rf "$WORK/cell" "$WORK/cell_more" "$WORK/fps_cuda" "$WORK/fps_cpu"   # this call's outputs only
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0 BIDL_ARTIFACT_KEY_FILE="$WORK/artifact.key" RAY_TMPDIR="$WORK/ray"
export BIDL_GPU_CELL_WORK="$WORK/gpu_cell_work"   # gpu_cell's artifacts and compiled programs
say() { echo "[check $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
# stage NAME MIN_S CAP_S COMMAND...: runs when NAME is selected and MIN_S fit in the budget
stage() {
  local name=$1 min=$2 cap=$(( $3 * CAPX )); shift 3
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local l; l=$(left)
  if (( l < min )); then say "SKIP $name: ${l}s left, needs ${min}s (rerun with STAGES=\"$name\")"; return 0; fi
  local t=$(( l < cap ? l : cap ))
  say "START $name (limit ${t}s): $*"
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "END $name rc=$rc"
}

: > "$LOG"
say "budget ${BUDGET_S}s, stages: $STAGES, results in $OUT"
export PYTHONPATH=$PWD
if python3 -c "import ray" >/dev/null 2>&1; then
  say "Ray is installed here: .gpu_carry/ not needed"
elif [ -f .gpu_carry/install.sh ]; then
  bash .gpu_carry/install.sh >>"$LOG" 2>&1 || say "WARNING: .gpu_carry/install.sh failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  say "WARNING: no Ray and no .gpu_carry/ (bash /work/shared/tools/gpu_carry_bundle.sh, then carry it)"
fi
if ! python3 -c "import spikingjelly" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || say "WARNING: installing .whl/ failed"
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, platform, os
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus", os.cpu_count())
for m in ("ray", "spikingjelly", "triton", "msgpack", "tqdm", "matplotlib"):
    try:
        mod = __import__(m); print(" ", m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(" ", m, "MISSING", type(e).__name__, e)
EOF
if [ "$SMOKE" != 1 ] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no CUDA device visible: nothing to check here"; exit 2
fi

# 1. the GPU tests: CUDA IPC transport (with and without IPC events), the cuda context against the cpu
#    one, a 3x2 grid of cuda cells sharing the GPU against the single-device reference
stage tests 45 170 python3 -m pytest -rs -s -p no:cacheprovider tests/test_cuda.py -k "$TESTS"
# 2. one cell, ResNetLif50 T=10 B=1: BIDL per-step eager, chunk eager, SpikingJelly, ours (graphs,
#    capture); and the 12.55 MB state hop between two processes through the cuda transport
stage cell 100 230 python3 benchmarks/gpu_cell.py "${CELL[@]}" "${S[@]}" --hop --hop-iters 200 --out "$WORK/cell"
cp "$WORK/cell/gpu_cell.json" "$OUT/gpu_cell.json" 2>/dev/null
cp "$WORK/cell/gpu_cell.png" "$OUT/gpu_cell.png" 2>/dev/null
# 3. 1, 2, 4, 6 cells on one GPU, time-only and 2-segment (CUDA-graph capture per cell: no codegen)
mkdir -p "$WORK/fps_cuda"
stage scale_cuda 60 150 python3 benchmarks/fps_scaling.py --backend cuda "${FPS_CUDA[@]}" --modes time,time2seg \
  --artifacts "$WORK/artifacts" --out "$WORK/fps_cuda" --partial-to "$WORK/fps_cuda/partial.json"
cp "$WORK/fps_cuda/fps_scaling.json" "$OUT/fps_cuda.json" 2>/dev/null || cp "$WORK/fps_cuda/partial.json" "$OUT/fps_cuda.json" 2>/dev/null
cp "$WORK/fps_cuda/fps_scaling.png" "$OUT/fps_cuda.png" 2>/dev/null
# 4. T=48 B=1 and T=10 B=16 (one Inductor compile each)
stage cell_more 150 400 python3 benchmarks/gpu_cell.py "${MORE[@]}" "${S[@]}" --out "$WORK/cell_more"
cp "$WORK/cell_more/gpu_cell.json" "$OUT/gpu_cell_more.json" 2>/dev/null
# 5. real compute on the 16 CPU cores: ResNetLif18, 1..12 cpu cells
mkdir -p "$WORK/fps_cpu"
stage scale_cpu 120 400 python3 benchmarks/fps_scaling.py --backend cpu "${FPS_CPU[@]}" --modes time,time2seg \
  --artifacts "$WORK/artifacts" --out "$WORK/fps_cpu" --partial-to "$WORK/fps_cpu/partial.json"
cp "$WORK/fps_cpu/fps_scaling.json" "$OUT/fps_cpu16.json" 2>/dev/null || cp "$WORK/fps_cpu/partial.json" "$OUT/fps_cpu16.json" 2>/dev/null
cp "$WORK/fps_cpu/fps_scaling.png" "$OUT/fps_cpu16.png" 2>/dev/null
say "done; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
