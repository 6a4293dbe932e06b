"""Shared test settings: a deterministic hypothesis profile, float32 products at full precision
on accelerators, the XLA:CPU fixture and the ../shared/data fixture."""
import os

import jax
import pytest
from hypothesis import settings

settings.register_profile("rsjax", derandomize=True, deadline=None, database=None, max_examples=15)
settings.load_profile("rsjax")

# The equivalence tests compare two float32 computations of one function at float32 tolerances.
# On a GPU JAX's default precision rounds the operands of float32 convolutions and matrix products
# to TF32 (10-bit mantissas), so two exact rewrites of one convolution differ by ~1e-3 relative
# (seen on an H200, 2026-11-27); the tests check the math at full precision there. On CPU the
# default is float32 already, and the CI runs there.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def xla_cpu():
    """rsjax's XLA:CPU forms, compiled for the CPU on any machine (``tests/cpu_forms.py``)."""
    from cpu_forms import xla_cpu_forms
    with xla_cpu_forms():
        yield


@pytest.fixture
def shared_data(request):
    """The real datasets directory; tests that need it skip with a reason when it is absent, or
    when it lacks a folder the test names with ``@pytest.mark.datasets(...)``."""
    from rsjax.data.paths import data_dir
    path = data_dir(required=False)
    if path is None:
        pytest.skip("no ../shared/data and no RSJAX_DATA: the real-data test needs the datasets folder")
    marker = request.node.get_closest_marker("datasets")
    missing = [d for d in (marker.args if marker else ()) if not (path / d).is_dir()]
    if missing:
        pytest.skip(f"the data directory {path} has no {', '.join(missing)}: the real-data test reads it")
    return path


@pytest.fixture(autouse=True)
def _no_user_data_env(monkeypatch):
    # Tests decide themselves where data comes from.
    if os.environ.get("RSJAX_DATA") and not os.path.isdir(os.environ["RSJAX_DATA"]):
        monkeypatch.delenv("RSJAX_DATA")
