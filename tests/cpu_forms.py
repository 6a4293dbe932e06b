"""``xla_cpu_forms()``: rsjax's XLA:CPU forms (``RSJAX_CONV=gemm``), compiled for and run on the
CPU whatever this machine's default backend is. For the tests that read the compiled HLO of those
forms: on a GPU machine jit would otherwise compile for the GPU, where the forms are off by
default (``materialize`` is then the identity) and XLA:GPU fuses and lays out a program its own way."""
import contextlib
import os

import jax


@contextlib.contextmanager
def xla_cpu_forms():
    old = os.environ.get("RSJAX_CONV")
    os.environ["RSJAX_CONV"] = "gemm"
    try:
        with jax.default_device(jax.devices("cpu")[0]):
            yield
    finally:
        if old is None:
            del os.environ["RSJAX_CONV"]
        else:
            os.environ["RSJAX_CONV"] = old
