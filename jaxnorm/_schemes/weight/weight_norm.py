"""Weight Normalization (Salimans & Kingma 2016): a kernel's direction and length apart.

Uses: jaxnorm._core (moments, validate), jaxnorm._schemes.weight
(weight_setup).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction, compute_dtype
from jaxnorm._schemes.weight.weight_setup import check_weight, safe_rsqrt

__all__ = ["weight_norm", "weight_norm_init"]

_FIX = "pass the kernel itself, or feature_axis=None to normalize it as a whole"


def _setup(fn, v, feature_axis, exponential):
    """``(v, pooled axes, g's shape, g's positions)`` for ``feature_axis`` (None: whole)."""
    if not isinstance(exponential, bool):
        raise TypeError(
            f"{fn}: exponential must be a bool, got {exponential!r}; pass exponential=True "
            f"to read g as log g"
        )
    if feature_axis is None:
        v = check.check_floating(fn, v)
        return v, tuple(range(v.ndim)), (), ()
    v, axis, others = check_weight(fn, v, feature_axis, name="v", fix=_FIX, min_rank=1)
    return v, others, (v.shape[axis],), axis


def _squared_norm(v, axes):
    """``‖v‖²`` over ``axes`` per feature (keepdims, compute dtype), one pass."""
    vc = v.astype(compute_dtype(v.dtype))
    return vc, Reduction(axes).local_sum(vc * vc)


def weight_norm(v, g, *, feature_axis: int | None = -1, exponential: bool = False) -> jax.Array:
    """Weight normalization (Salimans & Kingma, NeurIPS 2016).

    The kernel is reparameterized by a direction ``v`` and a length ``g`` per
    output feature, the norm taken over every axis but ``feature_axis``::

        w = g · v / ‖v‖            (exponential=False)
        w = exp(g) · v / ‖v‖       (exponential=True: the paper's g = e^s)

    Initialize ``g`` with :func:`weight_norm_init` to leave the wrapped layer
    unchanged at the start (PyTorch's choice; flax.linen starts at g = 1).
    A slice of ``v`` that is all zeros gives ``w = 0`` there, with zero
    (finite) derivatives, rather than 0/0.

    Args:
      v: the direction, a kernel such as ``(in, out)`` or ``(H, W, in, out)``.
      g: the length, ``(v.shape[feature_axis],)``; a scalar ``()`` with
        ``feature_axis=None``. With ``exponential=True`` its logarithm.
      feature_axis: the output-feature axis of ``v`` (-1 for Flax kernels, 0
        for PyTorch's ``(out, in, ...)``), or None for one norm of all of ``v``.
      exponential: read ``g`` as ``log g``.

    Returns:
      ``w``, with ``v``'s shape and dtype.

    Raises:
      TypeError: integer ``v`` or ``g``, a non-int feature_axis.
      ValueError: ``g`` of the wrong shape, feature_axis out of range.
    """
    fn = "weight_norm"
    v, axes, g_shape, position = _setup(fn, v, feature_axis, exponential)
    kind = "one per output feature" if g_shape else "a scalar, feature_axis=None"
    g, _ = check.check_param(fn, "g", g, {kind: g_shape}, v.shape)
    if g is None:
        raise TypeError(f"{fn}: g is required, got None; start from weight_norm_init(v)")
    vc, sq = _squared_norm(v, axes)
    gain = g.astype(vc.dtype)
    if exponential:
        gain = jnp.exp(gain)
    if g_shape:
        gain = jnp.expand_dims(gain, tuple(a for a in range(v.ndim) if a != position))
    return (vc * (safe_rsqrt(sq) * gain)).astype(v.dtype)


def weight_norm_init(v, *, feature_axis: int | None = -1, exponential: bool = False) -> jax.Array:
    """The ``g`` for which :func:`weight_norm` returns ``v`` itself: ``g = ‖v‖``.

    Args:
      v: the initial kernel (e.g. from the layer's own initializer).
      feature_axis: as in :func:`weight_norm`.
      exponential: return ``log ‖v‖`` (0 for an all-zero slice, whose
        output is 0 whatever ``g`` is).

    Returns:
      ``g`` of shape ``(v.shape[feature_axis],)`` (``()`` with
      ``feature_axis=None``), in ``v``'s dtype.

    Raises:
      TypeError, ValueError: as :func:`weight_norm`.
    """
    fn = "weight_norm_init"
    v, axes, g_shape, _ = _setup(fn, v, feature_axis, exponential)
    _, sq = _squared_norm(v, axes)
    sq = sq.reshape(g_shape)
    if exponential:
        g = jnp.where(sq > 0, 0.5 * jnp.log(jnp.where(sq > 0, sq, 1)), 0)
    else:
        g = jnp.sqrt(sq)
    return g.astype(v.dtype)
