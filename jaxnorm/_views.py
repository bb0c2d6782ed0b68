"""Views: the same array under another HLO shape, to steer XLA:CPU's fusion.

``view(t, k)`` gives ``t`` ``k`` extra leading axes of size 1. The data and
the math are unchanged, and on GPU and TPU the reshape is free. On XLA:CPU
(jax 0.10) it matters: when two fusions use the same full-size value (one
broadcast of per-set statistics, one recomputed ``x − shift``), XLA stores it
in between, a full write and read of the input's size, which costs more than
the arithmetic it saves. Computing each fusion's operand in its own view
makes those values distinct, so each fusion recomputes what it needs from
``x`` instead. Measured with ``benchmarks/bench_norms.py`` (issue 7).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["unview", "view"]


def view(t, k: int):
    """``t`` with ``k`` leading unit axes (``t`` itself for ``k = 0``)."""
    return t.reshape((1,) * k + jnp.shape(t)) if k else t


def unview(t, k: int):
    """Undo :func:`view`: drop ``k`` leading unit axes."""
    return t.reshape(t.shape[k:]) if k else t
