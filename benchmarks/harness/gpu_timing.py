"""Timing jitted functions on an accelerator: batched, interleaved, L2-aware.

JAX dispatches asynchronously, so one call followed by ``block_until_ready``
measures dispatch + launch + kernel + synchronisation. Here each sample is a
batch of ``k`` back-to-back calls ended by one ``block_until_ready`` and
divided by ``k``: the host enqueues ahead of the device, so a sample is the
device time per call (or the host's dispatch time per call, when that is the
larger). ``k`` is chosen per function so that a batch lasts at least a target
time (20 ms by default), far above the timer's resolution and the one
synchronisation per batch.

Callables take the call's index ``i``; a caller that wants to defeat the L2
cache rotates among several input buffers with it (``xs[i % len(xs)]``).
Only the last call's output of a batch is kept alive; on one in-order device
stream its completion implies that of the others.

Bandwidth: :func:`ideal_bytes` is the unavoidable traffic of a normalization
(ANCHORS.md's byte model) and :func:`achieved` turns a time into TB/s and a
fraction of a copy bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Timing", "achieved", "batch_seconds", "calibrate_k", "copy_bandwidth", "ideal_bytes",
           "interleaved_batches"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one function: median and min over the repetitions."""

    median_s: float
    min_s: float
    k: int
    reps: int

    def to_json(self) -> dict:
        return {"ms": 1e3 * self.median_s, "min_ms": 1e3 * self.min_s, "k": self.k, "reps": self.reps}


def batch_seconds(fn: Callable[[int], object], k: int) -> float:
    """Wall-clock seconds of ``fn(0) … fn(k-1)`` dispatched back to back, then synchronised."""
    out = None
    start = time.perf_counter()
    for i in range(k):
        out = fn(i)
    jax.block_until_ready(out)
    return time.perf_counter() - start


def calibrate_k(fn: Callable[[int], object], target_s: float, *, max_k: int = 100_000) -> int:
    """The number of calls for a batch of ``fn`` to last about ``target_s`` (at least 1)."""
    k = 1
    while True:
        elapsed = batch_seconds(fn, k)
        if elapsed >= target_s or k >= max_k:
            return k
        if elapsed >= target_s / 8:
            # Close enough to extrapolate; 10% margin above the target.
            return min(max_k, max(k + 1, math.ceil(1.1 * k * target_s / elapsed)))
        k = min(max_k, k * 8)


def interleaved_batches(
    fns: Sequence[Callable[[int], object]],
    *,
    reps: int,
    target_s: float = 0.02,
    warmup: int = 3,
) -> list[Timing]:
    """Time each function as batches of back-to-back calls, interleaved.

    Every function is first called ``warmup`` times (compilation, autotuning,
    allocator), then gets its own batch size ``k`` (:func:`calibrate_k`).
    Each repetition then runs one batch of every function in turn, in reverse
    order every other repetition, so that slow drifts (clocks, temperature,
    other load) hit them all alike and none always follows the same one.

    Args:
      fns: callables of the call index ``i``, returning the call's output.
      reps: number of timed repetitions (samples per function).
      target_s: minimum duration of one batch.
      warmup: untimed calls of each function first.

    Returns:
      One :class:`Timing` per function: median and min of seconds per call.
    """
    for fn in fns:
        for i in range(warmup):
            jax.block_until_ready(fn(i))
    ks = [calibrate_k(fn, target_s) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(reps):
        for j in order if r % 2 == 0 else order[::-1]:
            samples[j].append(batch_seconds(fns[j], ks[j]) / ks[j])
    return [Timing(statistics.median(s), min(s), k, reps) for s, k in zip(samples, ks)]


def copy_bandwidth(nbytes: int, *, reps: int, target_s: float = 0.02, dtype=jnp.float32) -> dict:
    """Device copy bandwidth: a jitted ``x * a`` over ``nbytes`` of ``dtype``.

    ``a`` is a traced scalar (1.0 at run time), so XLA can neither fold nor
    elide the pass: every element is read and written once. Bandwidth counts
    bytes read + written (``2 · nbytes``) over the median time per call.
    """
    n = max(1, nbytes // jnp.dtype(dtype).itemsize)
    x = jax.random.normal(jax.random.key(0), (n,), dtype)
    a = jnp.asarray(1, dtype)
    scale = jax.jit(lambda x, a: x * a)
    (t,) = interleaved_batches([lambda i: scale(x, a)], reps=reps, target_s=target_s)
    moved = 2 * n * jnp.dtype(dtype).itemsize
    return {
        "bytes_per_call": moved,
        "array_bytes": n * jnp.dtype(dtype).itemsize,
        "dtype": jnp.dtype(dtype).name,
        "median_ms": 1e3 * t.median_s,
        "min_ms": 1e3 * t.min_s,
        "tb_s": moved / t.median_s / 1e12,
        "tb_s_best": moved / t.min_s / 1e12,
        "k": t.k,
        "reps": t.reps,
    }


def ideal_bytes(shape: Sequence[int], dtype) -> dict:
    """The fewest bytes a normalization of ``shape`` in ``dtype`` must move.

    For E elements of b bytes (per-channel scale, bias and statistics
    ignored): the forward reads x and writes y, ``2·E·b``; the backward reads
    x and dy and writes dx, ``3·E·b``; a forward+backward step (the forward's
    y is kept, as in training) ``5·E·b``.

    Returns:
      ``{"elements": E, "itemsize": b, "fwd": 2Eb, "bwd": 3Eb, "fwd_bwd": 5Eb}``.
    """
    elements = math.prod(int(d) for d in shape)
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    if elements <= 0 or any(int(d) < 0 for d in shape):
        raise ValueError(f"ideal_bytes: shape {tuple(shape)} has no elements")
    return {"elements": elements, "itemsize": itemsize, "fwd": 2 * elements * itemsize,
            "bwd": 3 * elements * itemsize, "fwd_bwd": 5 * elements * itemsize}


def achieved(seconds: float, nbytes: int, copy_tb_s: float | None) -> dict:
    """``nbytes`` moved in ``seconds``: TB/s (1e12 bytes/s) and the fraction of ``copy_tb_s``."""
    if not seconds > 0:
        raise ValueError(f"achieved: time must be positive, got {seconds!r}")
    tb_s = nbytes / seconds / 1e12
    frac = tb_s / copy_tb_s if copy_tb_s else None
    return {"tb_s": tb_s, "frac_copy": frac}
