"""Views: the same array under another HLO shape, to steer XLA:CPU's fusion.

``view(t, k, like)`` gives ``t`` (an array that broadcasts against the array
``like``) ``k`` extra leading unit axes; ``split_view`` splits one of its
axes in two instead. The data and the math are unchanged; ``unview``
reshapes back.

Why. On XLA:CPU (jax 0.10), when two fusions use the same full-size value
(a broadcast of per-set statistics, a recomputed ``x − shift``), XLA stores
it in between: a full write and read of the input's size, more than the
arithmetic it saves. Computing each fusion's operand in its own view makes
those values distinct, so each fusion recomputes what it needs from ``x``
instead. Elsewhere (GPU, TPU) XLA fuses these well and a reshape could move
a sharded axis, so views are the identity off the CPU. ``benchmarks/xla_passes.py`` lists the fused kernels
and their outputs; ``benchmarks/bench_norms.py`` times the result (issue 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["few_sets", "split_view", "unview", "view"]

# XLA:CPU hands a fused kernel to YNNPACK only where each elementwise op
# touches at least this many elements (kMinElements in XLA's
# backends/cpu/ynn_support.cc, jax 0.10).
YNN_MIN_ELEMENTS = 4096


def _enabled(like) -> bool:
    return jax.default_backend() == "cpu" and not _explicitly_sharded(like)


def _explicitly_sharded(x) -> bool:
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return spec is not None and any(s is not None for s in spec)


def view(t, k: int, like):
    """``t`` (same rank as the array ``like``, broadcastable to it) with ``k`` leading unit axes.

    ``k = 0``, backends other than the CPU, and a ``like`` with explicit
    sharding in its type give ``t`` itself.
    """
    if k == 0 or not _enabled(like):
        return t
    return jnp.reshape(t, (1,) * k + tuple(jnp.shape(t)))


def split_view(t, like):
    """``t`` with ``like``'s first even axis but the last split in two, ``(2, n/2)``.

    Distinct from every :func:`view`. Where XLA:CPU reduces over the leading
    axes of a unit-axes view it is slow; this view avoids that. Without such
    an axis, three leading unit axes instead.
    """
    if not _enabled(like):
        return t
    shape = tuple(jnp.shape(like))
    for ax, n in enumerate(shape[:-1]):
        if n % 2 == 0:
            size = jnp.shape(t)[ax]
            parts = (2, n // 2) if size == n else (1, 1)
            return jnp.reshape(t, jnp.shape(t)[:ax] + parts + jnp.shape(t)[ax + 1 :])
    return view(t, 3, like)


def few_sets(num_sets: int, like) -> bool:
    """Whether XLA:CPU would cut a fused kernel at elementwise work on ``num_sets`` per-set values.

    With fewer than :data:`YNN_MIN_ELEMENTS` sets, an op on the per-set sums
    (``/n``, ``·rstd``) between a reduction and the broadcast that consumes
    it ends the YNNPACK kernel there, and XLA stores full-size intermediates
    instead. Callers then apply such factors to full-size operands. False
    off the CPU and for explicitly sharded ``like``, as for :func:`view`.
    """
    return _enabled(like) and num_sets < YNN_MIN_ELEMENTS


def unview(t, shape):
    """Undo a view: ``t`` back in ``shape`` (the viewed array's original shape)."""
    return t if jnp.shape(t) == tuple(shape) else jnp.reshape(t, shape)
