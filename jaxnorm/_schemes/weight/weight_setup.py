"""Argument checks shared by the schemes that normalize a weight, not an activation.

Weight Normalization, Spectral Normalization and Weight Standardization each
treat one axis of a kernel as its output features (``feature_axis``: -1 for
Flax's ``(in, out)`` Dense and ``(H, W, in, out)`` Conv kernels, 0 for
PyTorch's ``(out, in, ...)``) and pool every other axis.

Uses: jaxnorm._core (validate).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import validate as check

__all__ = ["check_weight", "safe_rsqrt"]


def check_weight(fn: str, w, feature_axis, *, name: str = "w", fix: str, min_rank: int = 2):
    """Validate a kernel of rank >= ``min_rank`` and its feature axis.

    Args:
      fn: the public function's name, for messages.
      w: the kernel.
      feature_axis: an int axis of ``w``.
      name: the argument's name in ``fn``.
      fix: what to do about a kernel of rank < ``min_rank``.
      min_rank: 2, or 1 where a vector is meaningful.

    Returns:
      ``(w, feature_axis, other_axes)`` with non-negative axes.

    Raises:
      TypeError: integer kernels, a non-int feature_axis.
      ValueError: rank < ``min_rank``, feature_axis out of range.
    """
    w = check.check_floating(fn, w)
    if w.ndim < min_rank:
        raise ValueError(
            f"{fn}: expected a kernel {name} of rank >= {min_rank} (e.g. (in, out) or "
            f"(H, W, in, out)), got shape {tuple(w.shape)}; {fix}"
        )
    axis = check.canonical_axis(fn, feature_axis, w.ndim, w.shape, name="feature_axis")
    others = tuple(a for a in range(w.ndim) if a != axis)
    return w, axis, others


def safe_rsqrt(t: jax.Array) -> jax.Array:
    """``1/sqrt(t)`` where ``t > 0``, else 0, with finite derivatives of every order.

    The inner ``where`` keeps ``rsqrt`` away from 0, so no infinity ever
    reaches a derivative (the usual double-``where``).
    """
    positive = t > 0
    return jnp.where(positive, lax.rsqrt(jnp.where(positive, t, 1)), 0)
