"""Wall-clock timing of jitted functions, interleaved, reported as medians.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax

__all__ = ["interleaved_medians", "interleaved_samples", "paired_ratio"]


def interleaved_samples(
    fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 2
) -> list[list[float]]:
    """Seconds of every timed call of each zero-argument function, round by round.

    The functions run round-robin, one call each per round, so that slow
    drifts of the machine (frequency, other load, memory reclaim) affect all
    of them alike; every other round runs them in reverse order, so that
    none always follows the same neighbour. Each call is followed by
    ``jax.block_until_ready`` on its result.

    Args:
      fns: zero-argument callables, typically closures over jitted functions.
      repeats: number of timed rounds.
      warmup: untimed rounds first (compilation, caches).

    Returns:
      One list per function; entry ``i`` of each list is from round ``i``.
    """
    for _ in range(warmup):
        for fn in fns:
            jax.block_until_ready(fn())
    samples: list[list[float]] = [[] for _ in fns]
    order = list(zip(fns, samples))
    for i in range(repeats):
        for fn, out in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - start)
    return samples


def interleaved_medians(
    fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 2
) -> list[float]:
    """Median seconds per call of each function, timed as :func:`interleaved_samples`."""
    return [statistics.median(s) for s in interleaved_samples(fns, repeats=repeats, warmup=warmup)]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Quartiles ``(q25, median, q75)`` of the per-round ratios ``a[i] / b[i]``.

    Both timings of a round ran back to back, so a ratio taken within the
    round cancels what the machine was doing at the time; the spread of the
    ratios says how far a single figure can be trusted.
    """
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    q25, q50, q75 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q25, q50, q75
