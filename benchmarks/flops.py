"""Counting the matrix-multiply and convolution FLOPs of a JAX function from its jaxpr.

XLA's ``cost_analysis()`` counts the body of a loop once, so it undercounts a step built on
``lax.scan`` (rsjax's banded convolutions are one). This walks the jaxpr instead, into every
sub-jaxpr (jit, custom_vjp/jvp, cond: the costliest branch) and multiplies a ``scan`` body by
its length. Only ``dot_general`` and ``conv_general_dilated`` are counted (2 FLOPs per
multiply-add): the arithmetic that a GEMM peak bounds. Elementwise work is left out.
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def _dot_flops(eqn) -> float:
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    contract = math.prod(lhs[i] for i in lc)
    return 2.0 * math.prod(out) * contract


def _conv_flops(eqn) -> float:
    dn = eqn.params["dimension_numbers"]
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    # rhs spec: (out feature dim, in feature dim, spatial dims...)
    cin_per_group = rhs[dn.rhs_spec[1]]
    taps = math.prod(rhs[i] for i in dn.rhs_spec[2:])
    return 2.0 * math.prod(out) * cin_per_group * taps


def _sub_jaxprs(eqn):
    for key, value in eqn.params.items():
        vals = value if isinstance(value, (tuple, list)) else (value,)
        for v in vals:
            if isinstance(v, jcore.ClosedJaxpr):
                yield key, v.jaxpr
            elif isinstance(v, jcore.Jaxpr):
                yield key, v


def jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        else:
            subs = list(_sub_jaxprs(eqn))
            if name in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
                subs = [s for s in subs if s[0] in ("call_jaxpr", "fun_jaxpr")][:1]
            total += sum(jaxpr_flops(j) for _, j in subs)
    return total


def count_flops(fn, *args, **kwargs) -> float:
    """Matrix-multiply and convolution FLOPs of one call ``fn(*args, **kwargs)``, after dead-code
    elimination (as XLA does: a gradient nobody uses, such as the input's, is not counted)."""
    from jax._src.interpreters import partial_eval as pe   # dce_jaxpr: no public equivalent yet
    jaxpr = jax.make_jaxpr(fn)(*args, **kwargs).jaxpr
    jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return jaxpr_flops(jaxpr)
