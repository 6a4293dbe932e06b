#!/usr/bin/env bash
# One device call (H200, 2026-11-27 21:25 UTC): the bank-copy diagnostic (then diag/bank_copies.py,
# now bank_copies.py beside this file) and the re-run of the tests that failed in pytest_first.log.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 300 python3 diag/bank_copies.py > "$OUT/bank_copies.log" 2>&1 &
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --durations=10 --junitxml="$OUT/pytest_rerun.xml" \
  tests/test_benchmarks_ms2anet.py::test_bench_shape_bfloat16_and_the_precision_modes \
  tests/test_benchmarks_resnet_probe.py::test_probe_tiny \
  tests/test_layers.py::test_materialize_is_exact_and_a_fusion_barrier \
  tests/test_ms2anet.py::test_weigh_bands_gradient_has_the_scene_on_the_left \
  tests/test_resnet_ops.py::test_kernel_gradient_in_either_orientation_equals_lax \
  tests/test_resnet_ops.py::test_max_pool_gradient_materialises_argmax_and_incoming_gradient \
  tests/test_resnet_ops.py::test_kernel_gradient_reads_the_output_gradient_as_it_lies \
  tests/test_embed_step.py > "$OUT/pytest_rerun.log" 2>&1
echo "pytest exit $?"
wait
grep -E "bank copies|kernel copies|Error|error" "$OUT/bank_copies.log" | head -60
tail -n 25 "$OUT/pytest_rerun.log"
