#!/usr/bin/env bash
# Both speed benchmarks on a GPU machine in one go (the device machine of benchmarks/README.md):
# rsjax vs PyTorch CUDA, float32 (no TF32) and bfloat16 (mixed precision). Every part has its own
# time limit so that one failure still leaves the others' figures; JSON and logs go to $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh
# Python packages missing there (ml_collections) may be carried as wheels in .whl/.
set -u
OUT=${OUT:-/tmp/rsjax_gpu}
mkdir -p "$OUT"
if ! python3 -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
start=$(date +%s)
part() {   # part NAME SECONDS CMD...: one benchmark, its JSON on stdout, its log on stderr
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s, at $(( $(date +%s) - start )) s)"
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  echo "   exit $?"; tail -n 4 "$OUT/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/versions.txt"
part ms2anet 170 python3 -m benchmarks.ms2anet_step --json --dtypes float32 bfloat16
part snca64 210 python3 -m benchmarks.snca_step --json --sizes 64 --dtypes float32 bfloat16
part snca128 150 python3 -m benchmarks.snca_step --json --sizes 128 --dtypes float32 bfloat16 --no-scaling
left=$(( ${RSJAX_GPU_BUDGET:-560} - ($(date +%s) - start) ))
if [ "$left" -gt 40 ]; then   # the CPU's GEMM forms on the GPU, to show why auto picks XLA's there
  RSJAX_CONV=gemm part ms2anet_gemm_forms $(( left - 10 )) python3 -m benchmarks.ms2anet_step --json --shapes trento --reps 3
fi
echo "== done in $(( $(date +%s) - start )) s"
