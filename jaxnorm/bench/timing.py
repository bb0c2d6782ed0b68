"""Wall-clock timing of jitted functions, interleaved, reported as medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax

__all__ = ["interleaved_medians"]


def interleaved_medians(
    fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 2
) -> list[float]:
    """Median seconds per call of each zero-argument function.

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
      One median, in seconds, per function.
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
    return [statistics.median(s) for s in samples]
