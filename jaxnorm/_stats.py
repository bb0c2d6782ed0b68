"""The statistics core: exact moments over any reduction set, in one pass.

Every scheme in jaxnorm normalizes with the mean and variance of some set of
entries of its input: LayerNorm over the feature axes, InstanceNorm over the
spatial axes, GroupNorm over the spatial axes and a group of channels, and
(later) BatchNorm over everything but the channels. A :class:`Reduction`
describes that set; :func:`moments` computes its statistics.

Exactness. The textbook single pass ``var = E[x²] − E[x]²`` cancels
catastrophically when ``|mean| >> std`` (float32 at mean 1e4 loses every
digit). Two passes cost a second read of the data. jaxnorm instead takes the
moments of ``d = x − s``, where the *shift* ``s`` is one sample of each
reduction set (Chan, Golub & LeVeque 1983)::

    m = E[d],    var = E[d²] − m²,    mean = s + m.

``s`` lies within a few standard deviations of the mean, so ``m`` is of the
order of the spread and the subtraction loses almost nothing; ``x − s`` is
exact in floating point when ``x`` and ``s`` are close (Sterbenz). Normalized
values are formed as ``(x − s) − m``, never ``x − mean``, which keeps them
exact even at a mean of 1e6 in float32. The shift carries no gradient: the
statistics do not depend on it, so derivatives of every order are unchanged.

Masks select (``jnp.where``), never multiply, so masked entries holding NaN or
Inf never reach a statistic. With a mask the shift is the masked mean (one
extra pass), because the first entry of a set may be masked.

Statistics are accumulated in at least float32 (:func:`compute_dtype`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Reduction", "Moments", "compute_dtype", "moments"]


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype statistics are accumulated in: ``dtype`` promoted to >= float32."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Reduction:
    """Which entries of an array share one set of statistics.

    Entries that differ only along ``axes`` share statistics; so do entries
    whose index along ``group_axis`` falls in the same of ``num_groups``
    contiguous, equal groups. Statistics are returned with ``keepdims`` shapes
    (size 1 along ``axes``, full size along ``group_axis``, each channel
    holding its group's value), so they broadcast against the input.

    Attributes:
      axes: non-negative, sorted axes that are summed over (may be empty).
      group_axis: an axis not in ``axes`` whose entries are pooled in groups,
        or None.
      num_groups: number of groups along ``group_axis``.
    """

    axes: tuple[int, ...]
    group_axis: int | None = None
    num_groups: int = 1

    def sum(self, t: jax.Array) -> jax.Array:
        """Sum ``t`` over each reduction set, keepdims shape (see class doc)."""
        s = jnp.sum(t, self.axes, keepdims=True) if self.axes else t
        if self.group_axis is None:
            return s
        ax = self.group_axis
        shape = s.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        pooled = jnp.sum(s.reshape(split), ax + 1, keepdims=True)
        return jnp.broadcast_to(pooled, split).reshape(shape)

    def size(self, shape) -> int:
        """Number of entries in each reduction set of an array of ``shape``."""
        n = math.prod(shape[a] for a in self.axes)
        if self.group_axis is not None:
            n *= shape[self.group_axis] // self.num_groups
        return n

    def first(self, x: jax.Array) -> jax.Array:
        """One entry of each reduction set (its first), keepdims shape."""
        for a in self.axes:
            x = lax.slice_in_dim(x, 0, 1, axis=a)
        if self.group_axis is None:
            return x
        ax = self.group_axis
        shape = x.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        head = lax.slice_in_dim(x.reshape(split), 0, 1, axis=ax + 1)
        return jnp.broadcast_to(head, split).reshape(shape)


class Moments(NamedTuple):
    """Statistics of each reduction set, keepdims shapes, compute dtype.

    The mean is split as ``shift + mean_shifted`` so that ``x − mean`` can be
    formed exactly as ``(x − shift) − mean_shifted``.

    Attributes:
      shift: a value close to the mean (no gradient); zero when uncentered.
      mean_shifted: ``E[x − shift]``; zero when uncentered.
      var: ``E[(x − mean)²]`` (biased), or ``E[x²]`` when uncentered.
      count: entries in each set (float), after masking.
    """

    shift: jax.Array
    mean_shifted: jax.Array
    var: jax.Array
    count: jax.Array

    @property
    def mean(self) -> jax.Array:
        """The mean itself, ``shift + mean_shifted`` (rounded once)."""
        return self.shift + self.mean_shifted


def moments(
    x: jax.Array,
    reduction: Reduction,
    *,
    where: jax.Array | None = None,
    center: bool = True,
) -> Moments:
    """Exact mean and biased variance of each reduction set of ``x``, one pass.

    ``var = E[d²] − E[d]²`` with ``d = x − shift`` (see module doc); with
    ``center=False`` the second moment ``E[x²]`` (RMSNorm) instead.

    Args:
      x: floating input; statistics are computed in ``compute_dtype(x.dtype)``.
      reduction: the sets of entries that share statistics.
      where: optional boolean mask broadcastable to ``x``; False entries are
        left out (selected away, so NaN/Inf there is harmless). A set with no
        selected entry gets zero statistics.
      center: subtract the mean (True) or not (False, RMSNorm).

    Returns:
      :class:`Moments` with keepdims shapes.
    """
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype)
    if where is None:
        count = jnp.asarray(reduction.size(x.shape), dtype)
        select = lambda t: t  # noqa: E731
    else:
        mask = jnp.broadcast_to(where, x.shape)
        count = jnp.maximum(reduction.sum(mask.astype(dtype)), 1)
        select = lambda t: jnp.where(mask, t, 0)  # noqa: E731

    if not center:
        zero = jnp.zeros((), dtype)
        var = reduction.sum(select(x * x)) / count
        return Moments(zero, zero, var, count)

    if where is None:
        shift = reduction.first(x)
    else:
        shift = reduction.sum(select(x)) / count
    shift = lax.stop_gradient(shift)
    d = select(x - shift)
    mean_shifted = reduction.sum(d) / count
    second = reduction.sum(d * d) / count
    var = jnp.maximum(second - mean_shifted * mean_shifted, 0)
    return Moments(shift, mean_shifted, var, count)
