"""Checking and timing one case: errors against float64, jit timings, ratios.

Uses: jaxnorm._core (moments), jaxnorm.bench (cases, faults, hlo_traffic,
memory, passes, progress, timing, traffic).
"""

from __future__ import annotations

import importlib.util
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._core.moments import unshifted_statistics
from jaxnorm.bench.cases import Case
from jaxnorm.bench.faults import page_faults_per_call
from jaxnorm.bench.hlo_traffic import compiled_traffic
from jaxnorm.bench.memory import residual_bytes, temp_bytes
from jaxnorm.bench.passes import count_passes, count_passes_vjp
from jaxnorm.bench.progress import Progress
from jaxnorm.bench.timing import interleaved_samples, paired_ratio
from jaxnorm.bench.traffic import FWD_BWD_PASSES, FWD_PASSES, copy_pass

__all__ = ["LOSSES", "flax_available", "passes_row", "run_case", "run_cases"]

LARGE_MEAN = 1e4


def flax_available() -> bool:
    """Whether flax is importable (the comparison columns need it)."""
    return importlib.util.find_spec("flax") is not None


def _inputs(case: Case, seed: int, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape).astype(dtype)
    scale = (1 + 0.1 * rng.standard_normal(case.param_shape)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(case.param_shape)).astype(np.float32)
    cot = rng.standard_normal(case.shape).astype(dtype)
    return x, scale, bias, cot


def _errors(apply, reference, x, scale, bias):
    """(max abs error on x, relative L2 error on x + LARGE_MEAN)."""
    y = np.asarray(jax.jit(apply)(x, scale, bias), np.float64)
    max_abs = float(np.max(np.abs(y - reference(x, scale, bias))))
    shifted = (x.astype(np.float64) + LARGE_MEAN).astype(x.dtype)
    y = np.asarray(jax.jit(apply)(shifted, scale, bias), np.float64)
    ref = reference(shifted, scale, bias)
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    return max_abs, rel


def _unshifted(apply):
    """``apply`` traced with unshifted statistics (measurement only)."""

    def run(x, scale, bias):
        with unshifted_statistics():
            return apply(x, scale, bias)

    return run


def _flax_apply(case: Case):
    module = case.flax_module()

    def apply(x, scale, bias):
        variables = {"params": {"scale": scale}}
        if case.has_bias:
            variables["params"]["bias"] = bias
        if not case.flax_batch_stats:
            return module.apply(variables, x)
        c = x.shape[-1]
        variables["batch_stats"] = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return module.apply(variables, x, mutable=["batch_stats"])[0]

    return apply


# The losses forward+backward is timed with: sum(y·c) for a fixed random c (the
# cotangent is an input), and sum(y²/2 + y) (the cotangent y + 1 is computed from y,
# so XLA may fuse the loss into the backward's passes).
LOSSES = {
    "linear": lambda y, c: jnp.sum(y * c),
    "square": lambda y, c: jnp.sum(y * y / 2 + y),
}


def passes_row(case: Case, impls: dict, dtype=np.float32) -> dict:
    """Passes over full-size data an ideally fusing compiler needs (:mod:`jaxnorm.bench.passes`).

    Forward and forward+backward (the cotangent an input), for each
    implementation, counted on the accelerator program (``platform="cuda"``).
    """
    x = jax.ShapeDtypeStruct(case.shape, dtype)
    p = jax.ShapeDtypeStruct(case.param_shape, np.float32)
    row = {}
    for name, apply in impls.items():
        fwd = count_passes(apply, x, p, p, platform="cuda")
        fwd_bwd = count_passes_vjp(apply, x, p, p, platform="cuda")
        row[f"{name}_passes_fwd"] = fwd.passes
        row[f"{name}_traffic_fwd"] = fwd.traffic
        row[f"{name}_passes_fwd_bwd"] = fwd_bwd.passes
        row[f"{name}_traffic_fwd_bwd"] = fwd_bwd.traffic
        row[f"{name}_passes_flags"] = sorted(set(fwd.flags) | set(fwd_bwd.flags))
    return row


def run_case(case: Case, *, repeats: int = 30, seed: int = 0, dtype=np.float32,
             with_flax: bool = True, memory: bool = False, traffic: bool = False,
             unshifted: bool = False, floor: bool = False, mean: float = 0.0,
             passes: bool = False, losses=("linear",)) -> dict:
    """Check ``case`` against float64 and time it (and its Flax twin).

    Forward is ``y = f(x, scale, bias)``; forward+backward is the gradient of
    ``sum(y · c)`` for a fixed random cotangent ``c`` with respect to x, scale
    and bias. Both run under ``jax.jit``; jaxnorm and Flax are interleaved.

    Args:
      memory: also report, per implementation, the residuals kept for the
        backward pass, XLA's temporary bytes for forward+backward
        (:mod:`jaxnorm.bench.memory`) and the bytes its compiled kernels
        move (:mod:`jaxnorm.bench.hlo_traffic`), as multiples of the input's
        bytes, and jaxnorm's moved bytes over Flax's; and the page faults
        per forward and per forward+backward call (:mod:`jaxnorm.bench.faults`).
      traffic: also measure this machine's elementwise-copy rate on ``x``
        (interleaved with the forward runs) and report each
        implementation's achieved rate against it
        (:mod:`jaxnorm.bench.traffic`).
      mean: added to the timed input (unit spread). At 0 jaxnorm takes its
        fast textbook moments; far from 0 (e.g. 1e4) its shifted ones.
      unshifted: also time jaxnorm with textbook, unshifted statistics
        (:func:`jaxnorm._core.moments.unshifted_statistics`; inexact at large
        means) and report its ratios to Flax: what exactness costs.
      floor: also time the case's floor program (the bare reductions any
        forward+backward must run, :mod:`jaxnorm.bench.floor`) with the
        forward+backward runs, and report it over Flax's time: about the
        lowest ratio a program built from XLA's kernels can reach.
      passes: also count the passes over full-size data of the accelerator
        program and of Flax's (:func:`passes_row`).
      losses: names in :data:`LOSSES`; forward+backward is timed for each
        (``fwd_bwd`` keys for the first, ``fwd_bwd_<loss>`` for the others).

    Returns:
      A JSON-ready row: errors, median milliseconds and jaxnorm/Flax ratios
      (the ratio of medians, and the median and interquartile range of the
      per-round paired ratios), and the memory and traffic figures asked for.
    """
    x, scale, bias, cot = _inputs(case, seed, dtype)
    x = (x.astype(np.float64) + mean).astype(dtype)
    x, scale, bias, cot = (jnp.asarray(a) for a in (x, scale, bias, cot))
    impls = {"jaxnorm": case.apply}
    if with_flax and case.flax_module is not None and flax_available():
        impls["flax"] = _flax_apply(case)
        if unshifted:
            impls["unshifted"] = _unshifted(case.apply)

    row = {
        "scheme": case.scheme,
        "implementation": case.implementation,
        "shape": list(case.shape),
        "dtype": np.dtype(dtype).name,
    }
    forward, backward, extra = [], [], {}
    for name, apply in impls.items():
        max_abs, rel = _errors(apply, case.reference, np.asarray(x), np.asarray(scale), np.asarray(bias))
        row[f"{name}_max_abs_error"] = max_abs
        row[f"{name}_rel_error_mean_1e4"] = rel
        fwd = jax.jit(apply)
        grads = [jax.jit(jax.grad(lambda x, s, b, c, f=apply, loss=LOSSES[k]: loss(f(x, s, b), c), argnums=(0, 1, 2)))
                 for k in losses]
        grad = grads[0]
        if memory and name != "unshifted":
            row[f"{name}_residuals_x"] = residual_bytes(apply, x, scale, bias) / x.nbytes
            temp = temp_bytes(grad, x, scale, bias, cot)
            row[f"{name}_temp_x"] = None if temp is None else temp / x.nbytes
            row[f"{name}_moved_x"] = compiled_traffic(grad, x, scale, bias, cot, like=x)
        forward.append(lambda f=fwd: f(x, scale, bias))
        backward.append(lambda g=grad: g(x, scale, bias, cot))
        for k, other in zip(losses[1:], grads[1:]):
            extra.setdefault(k, []).append(lambda g=other: g(x, scale, bias, cot))
    # Forward runs are interleaved with forward runs, forward+backward with
    # forward+backward: each group shares the allocator state it leaves.
    if traffic:
        forward.append(copy_pass(x))
    timed_floor = floor and case.floor is not None and "flax" in impls
    if timed_floor:
        backward.append(lambda f=case.floor: f(x, cot))
    fwd_samples = interleaved_samples(forward, repeats=repeats)
    bwd_samples = interleaved_samples(backward, repeats=repeats)
    extra_samples = {k: interleaved_samples(fns, repeats=repeats) for k, fns in extra.items()}
    fwd_times = [statistics.median(t) for t in fwd_samples]
    for name, tf, tb in zip(impls, fwd_samples, bwd_samples):
        row[f"{name}_fwd_ms"] = 1e3 * statistics.median(tf)
        row[f"{name}_fwd_bwd_ms"] = 1e3 * statistics.median(tb)
    for k, samples in extra_samples.items():
        for name, t in zip(impls, samples):
            row[f"{name}_fwd_bwd_{k}_ms"] = 1e3 * statistics.median(t)
    if memory:
        for name, fwd_fn, bwd_fn in zip(impls, forward, backward):
            if name != "unshifted":
                row[f"{name}_fwd_faults"] = page_faults_per_call(fwd_fn)
                row[f"{name}_fwd_bwd_faults"] = page_faults_per_call(bwd_fn)
    row["input_mean"] = mean
    row["losses"] = list(losses)
    if passes:
        row.update(passes_row(case, {k: v for k, v in impls.items() if k != "unshifted"}, dtype))
    if timed_floor:
        row["floor_fwd_bwd_ms"] = 1e3 * statistics.median(bwd_samples[-1])
    if "flax" in impls:
        row["ratio_fwd"] = row["jaxnorm_fwd_ms"] / row["flax_fwd_ms"]
        row["ratio_fwd_bwd"] = row["jaxnorm_fwd_bwd_ms"] / row["flax_fwd_bwd_ms"]
        if memory:
            row["moved_ratio"] = row["jaxnorm_moved_x"] / row["flax_moved_x"]
        # Per-round ratios: the spread says how much of a ratio is the machine.
        flax_at = list(impls).index("flax")
        for kind, samples in (("fwd", fwd_samples), ("fwd_bwd", bwd_samples)):
            q25, q50, q75 = paired_ratio(samples[0], samples[flax_at])
            row[f"paired_ratio_{kind}"] = q50
            row[f"paired_ratio_{kind}_iqr"] = [q25, q75]
        for k, samples in extra_samples.items():
            row[f"ratio_fwd_bwd_{k}"] = row[f"jaxnorm_fwd_bwd_{k}_ms"] / row[f"flax_fwd_bwd_{k}_ms"]
            q25, q50, q75 = paired_ratio(samples[0], samples[flax_at])
            row[f"paired_ratio_fwd_bwd_{k}"] = q50
            row[f"paired_ratio_fwd_bwd_{k}_iqr"] = [q25, q75]
        if timed_floor:
            row["floor_ratio_fwd_bwd"] = row["floor_fwd_bwd_ms"] / row["flax_fwd_bwd_ms"]
        if "unshifted" in impls:
            row["unshifted_ratio_fwd"] = row["unshifted_fwd_ms"] / row["flax_fwd_ms"]
            row["unshifted_ratio_fwd_bwd"] = row["unshifted_fwd_bwd_ms"] / row["flax_fwd_bwd_ms"]
    if traffic:
        copy = 2 * x.nbytes / fwd_times[-1]
        row["copy_GBps"] = copy / 1e9
        for name in impls:
            for kind, passes in (("fwd", FWD_PASSES), ("fwd_bwd", FWD_BWD_PASSES)):
                rate = passes * x.nbytes / (row[f"{name}_{kind}_ms"] / 1e3)
                row[f"{name}_{kind}_GBps"] = rate / 1e9
                row[f"{name}_{kind}_of_copy"] = rate / copy
    return row


def run_cases(cases, *, repeats: int = 30, seed: int = 0, dtype=np.float32,
              with_flax: bool = True, progress: bool = True, **measure) -> list[dict]:
    """:func:`run_case` on each case (``measure``: its memory/traffic flags), with a progress bar."""
    bar = Progress(len(cases), enabled=progress)
    rows = []
    for case in cases:
        rows.append(run_case(case, repeats=repeats, seed=seed, dtype=dtype, with_flax=with_flax, **measure))
        bar.step(f"{case.scheme} {'x'.join(map(str, case.shape))}")
    return rows
