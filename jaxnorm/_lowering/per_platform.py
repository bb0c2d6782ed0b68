"""Lowering per platform: one traced program that carries the code for each platform.

A jitted or exported jaxnorm program may be compiled for a platform other
than the one that traced it (``jax.export(..., platforms=[...])``,
ahead-of-time compilation), so no choice here is taken from
``jax.default_backend()``. Where XLA:CPU wants the work arranged
differently from XLA:GPU and XLA:TPU (:mod:`jaxnorm._lowering.xla_cpu`), the piece is
traced twice, once for each *target*, and both programs are carried by one
primitive whose lowering rule is registered per platform: lowering for the
CPU emits the CPU program, lowering for any other platform the accelerator
program, and a multi-platform export holds both under XLA's switch on the
platform index, resolved before compilation. Unlike
``jax.lax.platform_dependent`` (a ``lax.switch``), a single-platform lowering
contains no ``stablehlo.case`` at all.

Use::

    y = lower_per_platform(x, s, cpu=cpu_fn, accelerator=accelerator_fn)

Both functions take the same arguments (pytrees of arrays) and return
outputs of the same shapes and dtypes. While a function is traced,
:func:`target` tells which program it is building, so code shared by both
(``cpu=fn, accelerator=fn``) can steer XLA:CPU only in the CPU program.
Pieces that are traced inside another piece's trace run directly (the
target is already known).

Transformations. The primitive batches (each program vmapped), differentiates
in forward mode (a second primitive carries each program's tangent map, so
reverse mode sees a primal part and a linear part) and transposes (each
program's linear map transposed), so jit, vmap, grad, jvp and higher orders
all work; every rule builds new per-platform primitives, never a
conditional.

``JAXNORM_CPU_LOWERING=accelerator`` (read at trace time) traces the
accelerator program only, so that the CPU runs exactly what a GPU or TPU
runs: a testing aid for checking the accelerator path's numbers here.
Functions already compiled keep the lowering they were traced with.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util
from jax.extend import core
from jax.interpreters import ad, batching, mlir

__all__ = ["ACCELERATOR", "CPU", "ENV_VAR", "lower_per_platform", "requested", "target", "tracing"]

CPU = "cpu"
ACCELERATOR = "accelerator"
_TARGETS = (CPU, ACCELERATOR)
ENV_VAR = "JAXNORM_CPU_LOWERING"

_TARGET = contextvars.ContextVar("jaxnorm_lowering_target", default=None)


def target() -> str:
    """The program being traced: ``"cpu"`` or ``"accelerator"`` (the default outside any piece)."""
    return _TARGET.get() or ACCELERATOR


@contextlib.contextmanager
def tracing(t: str):
    """Trace the code inside as the ``t`` program (``"cpu"`` or ``"accelerator"``); for tests of one program."""
    token = _TARGET.set(t)
    try:
        yield
    finally:
        _TARGET.reset(token)


def requested() -> str:
    """The programs a trace starting now builds: ``"per_platform"``, or ``"accelerator"`` (``JAXNORM_CPU_LOWERING``).

    Part of the static settings of jaxnorm's cached traces (e.g.
    :class:`jaxnorm._core.normalize.NormSpec`), so that JAX never reuses a trace
    made under the other setting.
    """
    return ACCELERATOR if _cpu_runs_accelerator_code() else "per_platform"


def _cpu_runs_accelerator_code() -> bool:
    value = os.environ.get(ENV_VAR, "")
    if value in ("", "default"):
        return False
    if value == ACCELERATOR:
        return True
    raise ValueError(
        f"jaxnorm: environment variable {ENV_VAR}={value!r} is not understood; "
        f"set it to 'accelerator' (the CPU runs the GPU/TPU code path) or unset it"
    )


def lower_per_platform(*args, cpu, accelerator):
    """``cpu(*args)`` when lowered for the CPU, ``accelerator(*args)`` for any other platform.

    Args:
      *args: pytrees of arrays (None leaves allowed), passed to both.
      cpu, accelerator: functions of ``args`` returning pytrees of arrays
        with the same structure, shapes and dtypes. They must not close over
        traced values (pass them as arguments).

    Returns:
      The outputs of the program for the platform the caller is lowered for.
      Outside any trace (eager), the function for the platform the arguments
      live on runs directly.
    """
    if _TARGET.get() is not None:
        return (cpu if _TARGET.get() == CPU else accelerator)(*args)
    if _cpu_runs_accelerator_code():
        with tracing(ACCELERATOR):
            return accelerator(*args)
    leaves, in_tree = tree_util.tree_flatten(args)
    if isinstance(core.find_top_trace(leaves), _EAGER):  # not under jit or any transformation
        t = CPU if _eager_platforms(leaves) == {"cpu"} else ACCELERATOR
        with tracing(t):
            return (cpu if t == CPU else accelerator)(*args)
    leaves = [t if isinstance(t, jax.core.Tracer) else jnp.asarray(t) for t in leaves]
    out_trees = {}

    def flat(fn, key):
        def run(*xs):
            out = fn(*tree_util.tree_unflatten(in_tree, xs))
            out_leaves, out_trees[key] = tree_util.tree_flatten(out)
            return out_leaves
        return run

    outs = _bind({CPU: flat(cpu, CPU), ACCELERATOR: flat(accelerator, ACCELERATOR)}, leaves)
    if out_trees[CPU] != out_trees[ACCELERATOR]:
        raise TypeError(
            f"lower_per_platform: the CPU and accelerator programs return different structures "
            f"({out_trees[CPU]} and {out_trees[ACCELERATOR]})"
        )
    return tree_util.tree_unflatten(out_trees[ACCELERATOR], outs)


def _eager_platforms(leaves) -> set:
    platforms = {d.platform for t in leaves if isinstance(t, jax.Array) for d in t.devices()}
    return platforms or {jax.default_backend()}


def _eval_trace_type() -> type:
    """The type of the trace in effect outside jit and every transformation (eager evaluation).

    Read in a fresh thread, whose tracing context is always the eager one:
    jaxnorm may be imported for the first time inside a traced function
    (``jax.jit(lambda x: __import__("jaxnorm").batch_norm(...))``), where the
    importing thread's current trace is jit's.
    """
    found = []
    reader = threading.Thread(target=lambda: found.append(type(core.find_top_trace(()))))
    reader.start()
    reader.join()
    return found[0]


_EAGER = _eval_trace_type()

_per_platform_p = core.Primitive("jaxnorm_per_platform")
_per_platform_p.multiple_results = True


def _trace(fn, t: str, leaves):
    with tracing(t):
        closed = jax.make_jaxpr(lambda *xs: list(fn(*xs)))(*leaves)
    if any(isinstance(c, jax.core.Tracer) for c in closed.consts):
        raise TypeError("lower_per_platform: a function closes over a traced value; pass it as an argument")
    return closed


def _bind(fns: dict, leaves: list) -> list:
    """Trace ``fns[target](*leaves)`` for both targets and bind (or inline when the programs agree)."""
    programs = {t: _trace(fns[t], t, leaves) for t in _TARGETS}
    c, a = programs[CPU], programs[ACCELERATOR]
    if [(v.shape, v.dtype) for v in c.out_avals] != [(v.shape, v.dtype) for v in a.out_avals]:
        raise TypeError(
            f"lower_per_platform: the CPU and accelerator programs return different shapes or dtypes "
            f"({c.out_avals} and {a.out_avals})"
        )
    if str(c) == str(a):  # nothing platform-specific: one program
        return core.jaxpr_as_fun(a)(*leaves)
    return _per_platform_p.bind(*leaves, cpu=c, accelerator=a)


def _abstract_eval(*avals, cpu, accelerator):
    del avals, cpu
    return accelerator.out_avals


def _impl(*args, cpu, accelerator):
    program = cpu if _eager_platforms(args) == {"cpu"} else accelerator
    return core.jaxpr_as_fun(program)(*args)


def _lowering(t: str):
    def rule(ctx, *args, cpu, accelerator):
        program = cpu if t == CPU else accelerator
        return mlir.lower_fun(core.jaxpr_as_fun(program), multiple_results=True)(ctx, *args)
    return rule


_per_platform_p.def_abstract_eval(_abstract_eval)
_per_platform_p.def_impl(_impl)
mlir.register_lowering(_per_platform_p, _lowering(ACCELERATOR))
mlir.register_lowering(_per_platform_p, _lowering(CPU), platform="cpu")


def _each(cpu, accelerator, make):
    """``{target: make(program)}`` for both programs."""
    return {CPU: make(cpu), ACCELERATOR: make(accelerator)}


def _batch(axis_data, args, dims, *, cpu, accelerator):
    """vmap: each program vmapped (with the outer axis's name, for collectives inside)."""
    if all(d is None for d in dims):  # nothing batched here (the rule sees every binding)
        return _per_platform_p.bind(*args, cpu=cpu, accelerator=accelerator), [None] * len(accelerator.out_avals)
    in_axes = list(dims)

    def make(program):
        fn = core.jaxpr_as_fun(program)
        return lambda *xs: jax.vmap(
            lambda *ys: fn(*ys), in_axes=in_axes, axis_size=axis_data.size,
            axis_name=axis_data.name, spmd_axis_name=axis_data.spmd_name,
        )(*xs)

    outs = _bind(_each(cpu, accelerator, make), list(args))
    return outs, [0] * len(outs)


def _is_float(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _jvp(primals, tangents, *, cpu, accelerator):
    """Forward mode: the primal primitive, and a second one carrying each program's tangent map.

    Keeping them apart lets reverse mode keep the first (known) and
    transpose the second, which is linear in the tangents.
    """
    out = _per_platform_p.bind(*primals, cpu=cpu, accelerator=accelerator)
    nonzero = [type(t) is not ad.Zero for t in tangents]
    out_float = [_is_float(a) for a in accelerator.out_avals]
    live = [t for t, nz in zip(tangents, nonzero) if nz]
    if not live:
        return out, [ad.Zero.from_primal_value(o) for o in out]
    n = len(primals)

    def make(program):
        fn = core.jaxpr_as_fun(program)

        def tangent_map(*xs):
            ps, ts = xs[:n], iter(xs[n:])
            full = []
            for p, nz in zip(ps, nonzero):
                if nz:
                    full.append(next(ts))
                elif jnp.issubdtype(jnp.result_type(p), jnp.inexact):
                    full.append(jnp.zeros_like(p))
                else:
                    full.append(np.zeros(np.shape(p), jax.dtypes.float0))
            _, t_out = jax.jvp(lambda *a: fn(*a), tuple(ps), tuple(full))
            return [t for t, f in zip(t_out, out_float) if f]
        return tangent_map

    t_out = iter(_bind(_each(cpu, accelerator, make), list(primals) + live))
    return out, [next(t_out) if f else ad.Zero.from_primal_value(o) for o, f in zip(out, out_float)]


def _transpose(cotangents, *args, cpu, accelerator):
    """Reverse mode: each program's map, linear in the undefined arguments, transposed."""
    linear = [ad.is_undefined_primal(a) for a in args]
    known = [a for a, lin in zip(args, linear) if not lin]
    linear_avals = [a.aval for a, lin in zip(args, linear) if lin]
    cts = [ad.instantiate_zeros(c) for c in cotangents]
    n = len(known)

    def make(program):
        fn = core.jaxpr_as_fun(program)

        def transposed(*xs):
            ks, cs = xs[:n], list(xs[n:])

            def linear_map(*ls):
                k, l_ = iter(ks), iter(ls)
                return fn(*[next(l_) if lin else next(k) for lin in linear])
            return list(jax.linear_transpose(linear_map, *linear_avals)(cs))
        return transposed

    res = iter(_bind(_each(cpu, accelerator, make), known + cts))
    return [next(res) if lin else None for lin in linear]


batching.fancy_primitive_batchers[_per_platform_p] = _batch
ad.primitive_jvps[_per_platform_p] = _jvp
ad.primitive_transposes[_per_platform_p] = _transpose
