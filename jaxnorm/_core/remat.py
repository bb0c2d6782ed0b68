"""Reverse mode that keeps only a function's inputs and its per-set statistics.

A normalization's backward pass needs ``x`` and each set's statistics; every
full-size intermediate (``x − μ``, ``x̂``, a sigmoid gate, a window sum) can
be recomputed from them, fused into the backward's own passes over the data,
for less than it costs to store and reload it. :func:`keep_statistics` wraps
a function in ``jax.checkpoint`` with a policy that saves only the values
named with :func:`statistic` (the statistics core names its moments, and
:mod:`jaxnorm._core.normalize` its ``rstd``); everything else is recomputed.
Forward mode and higher orders are unaffected (``jax.checkpoint`` is the
identity there).

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

__all__ = ["STATISTICS", "keep_statistics", "statistic"]

STATISTICS = "jaxnorm_statistics"


def statistic(t):
    """``t``, marked as a per-set statistic that reverse mode may keep."""
    return checkpoint_name(t, STATISTICS)


def keep_statistics(fn):
    """``fn`` whose reverse mode keeps its inputs and named statistics only.

    Args:
      fn: a function of arrays (pytrees; None leaves allowed).

    Returns:
      ``jax.checkpoint(fn)`` saving only values named with :func:`statistic`.
    """
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(STATISTICS))
