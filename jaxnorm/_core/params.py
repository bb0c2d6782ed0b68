"""Placing per-channel and per-example parameters against the input.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["apply_affine", "expand_to"]


def expand_to(p: jax.Array | None, ndim: int, positions: tuple[int, ...]):
    """Reshape ``p`` to rank ``ndim`` with its axes at ``positions``, 1 elsewhere.

    ``positions`` are increasing axes of the input, one per axis of ``p``;
    e.g. a per-example ``(N, C)`` scale for an NCHW input goes to positions
    ``(0, 1)`` and becomes ``(N, C, 1, 1)``.
    """
    if p is None:
        return None
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return jnp.reshape(p, shape)


def apply_affine(y: jax.Array, scale, bias) -> jax.Array:
    """``y · scale + bias``, skipping whichever of them is None."""
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y
