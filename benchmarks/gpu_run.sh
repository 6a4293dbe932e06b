#!/usr/bin/env bash
# The speed benchmarks on a GPU machine: rsjax vs PyTorch CUDA, float32 (no TF32) and bfloat16
# (mixed precision). JSON and logs go to $OUT; every part has its own time limit, and each
# benchmark logs a "record {json}" line per step or shape, so a part cut short keeps what it measured.
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh [PART ...]     PART: ms2anet snca64 snca128 probe (default all),
#   or: ms2anet-xla ms2anet-polyphase (one RSJAX_CONV form each), snca128mu (SNCA-CE(MU) 128 px bfloat16),
#   tests (the whole test suite on the GPU, 8 pytest-xdist workers; pytest.log and pytest.xml in $OUT),
#   snca-table (experiments.table_snca on UC Merced at 128 px with the paper's 100-epoch schedule, one seed,
#   the methods in order until 430 s have passed; needs RSJAX_DATA; the table and runs, less checkpoints,
#   in $OUT/snca_table.tgz; SNCA_FROM=DIR starts from the finished runs of an earlier table; SNCA_SEEDS,
#   SNCA_METHODS and SNCA_LIMIT set the seeds per method, the training order (default: table_snca's) and
#   the time limit; SNCA_M_SCHEDULE the MB bank momentum schedule (default none, the paper's: the table
#   in results/snca_gpu_e100_128 needs 80:0.8,120:0.9); the table lists all five methods)
# Compiling the SNCA-CE step on an H100 took 43-100 s (XLA autotunes its convolutions): all four
# parts need about 15 minutes; run them as two calls where one command may take at most 10
# (ms2anet probe snca64 | snca128). Packages missing there (ml_collections) may come as wheels in .whl/.
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
  timeout "$limit" "$@" > "$OUT/$name.json" 2> >(grep -v cuda_timer > "$OUT/$name.log")
  echo "   exit $?"; sleep 1; grep -v '^record ' "$OUT/$name.log" | tail -n 4
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/versions.txt"
for p in ${*:-ms2anet probe snca64 snca128}; do
  case $p in
    ms2anet) part ms2anet 240 python3 -m benchmarks.ms2anet_step --json --dtypes float32 bfloat16 ;;
    ms2anet-xla|ms2anet-polyphase)
             RSJAX_CONV=${p#ms2anet-} part "$p" 150 python3 -m benchmarks.ms2anet_step --json --dtypes float32 bfloat16 ;;
    probe)   part conv_probe 90 python3 -m benchmarks.conv_probe --json ;;
    snca64)  part snca64 420 python3 -m benchmarks.snca_step --json --sizes 64 --dtypes float32 bfloat16 ;;
    snca128) part snca128 420 python3 -m benchmarks.snca_step --json --sizes 128 --dtypes float32 bfloat16 --no-scaling ;;
    tests)   echo "== tests (limit 450 s, at $(( $(date +%s) - start )) s)"
             timeout 450 python3 -m pytest -q -n 8 --durations=20 --junitxml="$OUT/pytest.xml" tests > "$OUT/pytest.log" 2>&1
             echo "   exit $?"; tail -n 40 "$OUT/pytest.log" ;;
    snca-table)
             limit=${SNCA_LIMIT:-430}
             echo "== snca-table (limit $limit s, at $(( $(date +%s) - start )) s)"
             mkdir -p /tmp/snca_table; [ -n "${SNCA_FROM:-}" ] && cp -r "$SNCA_FROM/runs" /tmp/snca_table/
             args=(--seeds "${SNCA_SEEDS:-1}" --epochs 100 --image-size 128 --batch-size 64
                   --m-schedule "${SNCA_M_SCHEDULE:-none}" --out /tmp/snca_table)
             timeout "$limit" python3 -m experiments.table_snca ${SNCA_METHODS:+--methods "$SNCA_METHODS"} "${args[@]}" \
               > "$OUT/snca_table.log" 2>&1
             echo "   exit $?"
             python3 -m experiments.table_snca "${args[@]}" --report-only >> "$OUT/snca_table.log" 2>&1
             # one archive: the device tool does not fetch folders nested as deep as runs/<run>/ (2026-11-28)
             tar -C /tmp/snca_table --exclude=checkpoints -czf "$OUT/snca_table.tgz" .
             tail -n 12 "$OUT/snca_table.log" ;;
    snca128mu) part snca128mu 200 python3 -m benchmarks.snca_step --json --sizes 128 --methods snca-ce-mu --dtypes bfloat16 --no-scaling ;;
    *) echo "unknown part $p: use ms2anet, ms2anet-xla, ms2anet-polyphase, probe, snca64, snca128, snca128mu, tests, snca-table" >&2; exit 2 ;;
  esac
done
echo "== done in $(( $(date +%s) - start )) s"
