"""Views: the same array under another HLO shape, to steer XLA:CPU's fusion.

``view(t, k, like)`` reshapes ``t`` (an array that broadcasts against the
array ``like``) into the ``k``-th alternative shape of ``like``'s: one axis split
as ``(2**k, n / 2**k)`` (the first axis but the last whose size ``2**k``
divides), or else ``k`` extra leading unit axes. The data and the math are
unchanged; ``unview`` reshapes back.

Why. On XLA:CPU (jax 0.10), when two fusions use the same full-size value
(a broadcast of per-set statistics, a recomputed ``x − shift``), XLA stores
it in between: a full write and read of the input's size, more than the
arithmetic it saves. Computing each fusion's operand in its own view makes
those values distinct, so each fusion recomputes what it needs from ``x``
instead. (Leading unit axes alone make a reduction over the remaining
leading axes slow there, hence the split.) Elsewhere, GPU and TPU, XLA fuses
these well and a reshape could move a sharded axis, so views are the
identity off the CPU. Measured with ``benchmarks/bench_norms.py`` (issue 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["unview", "view"]


def _view_shape(t_shape, shape, k):
    factor = 2**k
    for ax, n in enumerate(shape[:-1]):
        if n % factor == 0:
            size = t_shape[ax]
            parts = (factor, n // factor) if size == n else (1, 1)
            return t_shape[:ax] + parts + t_shape[ax + 1 :]
    return (1,) * k + tuple(t_shape)


def _explicitly_sharded(x) -> bool:
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return spec is not None and any(s is not None for s in spec)


def view(t, k: int, like):
    """``t`` (same rank as the array ``like``, broadcastable to it) in ``like``'s ``k``-th view.

    ``k = 0``, backends other than the CPU, and a ``like`` with explicit
    sharding in its type (whose axes may not be reshaped) give ``t`` itself.
    """
    if k == 0 or jax.default_backend() != "cpu" or _explicitly_sharded(like):
        return t
    return jnp.reshape(t, _view_shape(jnp.shape(t), tuple(jnp.shape(like)), k))


def unview(t, shape):
    """Undo :func:`view`: ``t`` back in ``shape`` (the original shape of the viewed array)."""
    return t if jnp.shape(t) == tuple(shape) else jnp.reshape(t, shape)
