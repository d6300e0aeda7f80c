#!/usr/bin/env bash
# The GPU measurements of issues 7 and 4 in one short run, for a machine with one GPU and JAX's CUDA build:
#   OUT=runs/gpu bash benchmarks/gpu_session.sh
# 1. MFU of the 1b preset's train step at its 16k-video-token shape, bf16, cuDNN attention, against a bf16
#    matmul peak measured in the same run (benchmarks/train_step.py). It tries remat save_dots first and
#    falls back to save_qkv_proj, then full, if the step does not fit (the 1b preset's state alone is
#    30 GiB in f32; compiled on the CPU at this shape, remat none needs 192 GiB and save_dots 75 GiB).
# 2. Issue 4's sampler figure: seconds per denoising step of the small preset, batched CFG (one forward of
#    the three guidance branches) against three separate forwards, in the same run (benchmarks/sample.py).
# 3. The largest sequence that fits the GPU per remat policy, from the compiled step's memory analysis
#    (python -m launch.compile --topology=local --fit; launch/memory_fit.py), then one real step at the
#    size found for the first policy, to check the compiled figure against the device.
# Every part has its own time limit and writes under $OUT as it goes, so a cut-off run keeps what it
# measured. Figures go to docs/performance.md with this command. The variables below change the
# platform, preset and kernel; tests/test_benchmark_gpu_session.py runs the script on the CPU that way.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session}
PY=${PYTHON:-python}
PLATFORM=${PLATFORM:-gpu}
PRESET=${PRESET:-1b}
DTYPE=${DTYPE:-bfloat16}
ATTENTION=${ATTENTION:-cudnn}
STEPS=${STEPS:-10}
MFU_REMATS=${MFU_REMATS:-save_dots save_qkv_proj full}
REMATS=${REMATS:-full,save_dots,save_qkv_proj,offload,none}
MEMORY_GB=${MEMORY_GB:-0}  # 0: the limit the device reports
MAX_FRAMES=${MAX_FRAMES:-256}
MFU_LIMIT=${MFU_LIMIT:-240}
FIT_LIMIT=${FIT_LIMIT:-420}
SAMPLE_PRESET=${SAMPLE_PRESET:-small}
SAMPLE_LIMIT=${SAMPLE_LIMIT:-120}
# The pool XLA allocates from on a GPU (JAX's default is 0.75 of the memory); --fit reads its size.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
mkdir -p "$OUT"

{ nvidia-smi; $PY -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"; } \
  >"$OUT/machine.txt" 2>&1

step() {  # benchmarks/train_step.py on this session's preset, kernel and dtype; extra flags follow
  timeout "$MFU_LIMIT" $PY -m benchmarks.train_step --platform="$PLATFORM" --preset="$PRESET" \
    --stage=3 --dtype="$DTYPE" --attention="$ATTENTION" --scan_layers --skip_torch "$@"
}

for remat in $MFU_REMATS; do
  echo "== MFU, remat $remat" | tee -a "$OUT/mfu.txt"
  if step --remat="$remat" --steps="$STEPS" --warmup=2 2>&1 | tee -a "$OUT/mfu.txt"; then
    break
  fi
done

# Batched CFG against separate forwards, in the same process, taking turns (issue 4).
timeout "$SAMPLE_LIMIT" $PY -m benchmarks.sample --platform="$PLATFORM" --preset="$SAMPLE_PRESET" \
  --dtype="$DTYPE" --attention="$ATTENTION" --steps=4 --repeats=3 2>&1 | tee "$OUT/sample.txt"

timeout "$FIT_LIMIT" $PY -m launch.compile --config="configs/stage3.py:$PRESET" --topology=local --fit \
  --remats="$REMATS" --memory_gb="$MEMORY_GB" --max_latent_frames="$MAX_FRAMES" \
  --config.model.dtype="$DTYPE" --config.model.attention="$ATTENTION" --config.model.scan_layers=true \
  --config.batch_size=1 --json_out="$OUT/fit.json" 2>&1 | tee "$OUT/fit.txt"

# One real step at the largest size found for the first policy: the compiled estimate, checked.
if [ -s "$OUT/fit.json" ]; then
  frames=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'][0]['latent_frames'])" "$OUT/fit.json")
  first=${REMATS%%,*}
  echo "== one step at latent_frames $frames, remat $first" | tee "$OUT/fit_check.txt"
  step --remat="$first" --latent_frames="$frames" --steps=1 --warmup=0 2>&1 | tee -a "$OUT/fit_check.txt"
fi
