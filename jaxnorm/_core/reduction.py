"""Reduction sets and their statistics' type: which entries share a mean and a variance.

:class:`Reduction` names the sets (the axes summed over, optionally groups of
channels, optionally across a named device axis), sums over them and samples
a few entries of each; :class:`Moments` holds a set's statistics with the
mean split as ``shift + mean_shifted``. Plain data and small helpers: the
statistics themselves are computed in :mod:`jaxnorm._core.moments`.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["Moments", "Reduction", "compute_dtype", "explicitly_sharded_axes", "inverse_std", "take_along"]


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype statistics are accumulated in: ``dtype`` promoted to >= float32."""
    return jnp.promote_types(dtype, jnp.float32)


def inverse_std(var, epsilon) -> jax.Array:
    """``rstd = 1/sqrt(var + ε)``, and 0 where ``var + ε`` is 0 (a constant set with ``ε = 0``).

    ``var`` is never negative here (the moments are clamped or two-pass).
    With ``ε > 0`` (a concrete setting, checked at trace time) this is the
    plain ``rsqrt``: XLA fuses the per-set factor into the output pass and
    recomputes it per entry, so a select there would cost on every entry.
    With ``ε = 0`` a set of equal entries has ``var = 0``: ``rstd = 0`` makes
    its output the bias with finite derivatives (``x − μ`` is 0 there); the
    inner ``where`` keeps ``rsqrt`` and its derivative away from 0.
    """
    if isinstance(epsilon, (int, float)) and epsilon > 0:
        return lax.rsqrt(var + epsilon)
    v = var + epsilon
    positive = v > 0
    return jnp.where(positive, lax.rsqrt(jnp.where(positive, v, 1)), 0)


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
      axis_name: a named axis (vmap, pmap, shard_map) the sets extend across.
      axis_index_groups: as in ``lax.psum``.
    """

    axes: tuple[int, ...]
    group_axis: int | None = None
    num_groups: int = 1
    axis_name: object = None
    axis_index_groups: tuple | None = None

    def local(self) -> Reduction:
        """The same sets on this member only (no named axis)."""
        return dataclasses.replace(self, axis_name=None, axis_index_groups=None)

    def sum(self, *ts: jax.Array):
        """Sum each ``t`` over its reduction sets, across ``axis_name`` too.

        One array gives one sum; several give a tuple and cost a single
        collective (their local sums are stacked before the ``psum``).
        """
        local = [self.local_sum(t) for t in ts]
        if self.axis_name is not None:
            if len(local) == 1:
                local = [self._psum(local[0])]
            else:
                local = list(self._psum(jnp.stack(jnp.broadcast_arrays(*local))))
        return local[0] if len(ts) == 1 else tuple(local)

    def _psum(self, t):
        return lax.psum(t, self.axis_name, axis_index_groups=self.axis_index_groups)

    def local_sum(self, t: jax.Array) -> jax.Array:
        """Sum ``t`` over each reduction set on this member only (no collective)."""
        s = jnp.sum(t, self.axes, keepdims=True) if self.axes else t
        if self.group_axis is None:
            return s
        ax = self.group_axis
        shape = s.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        pooled = jnp.sum(s.reshape(split), ax + 1, keepdims=True)
        return jnp.broadcast_to(pooled, split).reshape(shape)

    def size(self, shape) -> int:
        """Number of local entries in each reduction set of an array of ``shape``."""
        n = math.prod(shape[a] for a in self.axes)
        if self.group_axis is not None:
            n *= shape[self.group_axis] // self.num_groups
        return n

    def first(self, x: jax.Array) -> jax.Array:
        """One entry of each reduction set (its first), keepdims shape.

        Sets with no entries (an axis of size 0) get 0.
        """
        if any(x.shape[a] == 0 for a in self.axes):
            return jnp.zeros(self.kept_shape(x.shape), x.dtype)
        for a in self.axes:
            x = take_along(x, a, 0)
        if self.group_axis is None:
            return x
        ax = self.group_axis
        shape = x.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        head = lax.slice_in_dim(x.reshape(split), 0, 1, axis=ax + 1)
        return jnp.broadcast_to(head, split).reshape(shape)

    def samples(self, x: jax.Array, where=None):
        """Five entries of each set, spread over it: ``(values, selected)``.

        The entries at 0, 1/4, 1/2, 3/4 and the end of each set's entries in
        order (the summed axes in order, then a group's channels), each a
        static slice of ``x`` (a handful of entries, not a pass over ``x``;
        on an explicitly sharded axis, see :func:`take_along`). Fewer for
        sets of fewer than five entries.

        Args:
          x: the array.
          where: None, or the mask (``x``'s rank, each axis ``x``'s size or 1).

        Returns:
          ``(values, selected)``, each of the statistics' keepdims shape with
          the group axis holding one entry per group (:meth:`spread_groups`
          widens it) and a trailing sample axis; ``selected`` is None
          without a mask.
        """
        n = self.size(x.shape)
        compact = self._compact_shape(x.shape)
        if n == 0:
            zeros = jnp.zeros(compact + (1,), x.dtype)
            return zeros, (None if where is None else jnp.zeros(compact + (1,), bool))
        group_size = 1 if self.group_axis is None else x.shape[self.group_axis] // self.num_groups
        taken = [[], []]
        for position in sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1}):
            within = position % group_size
            rest = position // group_size
            coords = {}
            for a in reversed(self.axes):
                coords[a] = rest % x.shape[a]
                rest //= x.shape[a]
            for k, t in enumerate((x, where)):
                if t is None:
                    continue
                for a, c in coords.items():
                    t = take_along(t, a, c if t.shape[a] > 1 else 0)
                if self.group_axis is not None:
                    ga = self.group_axis
                    if t.shape[ga] > 1:
                        t = t.reshape(t.shape[:ga] + (self.num_groups, group_size) + t.shape[ga + 1 :])
                        t = take_along(t, ga + 1, within).reshape(t.shape[:ga] + (self.num_groups,) + t.shape[ga + 2 :])
                taken[k].append(jnp.broadcast_to(t, compact))
        values = jnp.stack(taken[0], axis=-1)
        return values, (None if where is None else jnp.stack(taken[1], axis=-1))

    def spread_groups(self, t: jax.Array, channels: int) -> jax.Array:
        """``t`` with one entry per group along the group axis, widened to one per channel."""
        if self.group_axis is None:
            return t
        ga, g = self.group_axis, self.num_groups
        t = jnp.expand_dims(t, ga + 1)
        t = jnp.broadcast_to(t, t.shape[: ga + 1] + (channels // g,) + t.shape[ga + 2 :])
        return t.reshape(t.shape[:ga] + (channels,) + t.shape[ga + 2 :])

    def _compact_shape(self, shape) -> tuple[int, ...]:
        """The statistics' keepdims shape with ``num_groups`` entries along the group axis."""
        kept = list(self.kept_shape(shape))
        if self.group_axis is not None:
            kept[self.group_axis] = self.num_groups
        return tuple(kept)

    def first_selected(self, x: jax.Array, where: jax.Array):
        """``x`` at the first selected entry of each set, and whether the set has one.

        Found from the mask alone (a minimum of each selected entry's
        position within its set, over the mask's own shape: small when the
        mask broadcasts), then one gather of ``x`` per set; not a pass over
        ``x``.

        Args:
          x: the array.
          where: the mask, of ``x``'s rank, each axis ``x``'s size or 1.

        Returns:
          ``(value, found)`` with the statistics' keepdims shape; ``value``
          is 0 where ``found`` is False.
        """
        shape = x.shape
        wshape = where.shape
        position = jnp.zeros(wshape, jnp.int32)
        extent = 1
        for a in reversed(self.axes):
            position = position + lax.broadcasted_iota(jnp.int32, wshape, a) * extent
            extent *= wshape[a]
        ga = self.group_axis
        size = 1
        if ga is not None and wshape[ga] > 1:
            size = shape[ga] // self.num_groups
            position = position * size + lax.broadcasted_iota(jnp.int32, wshape, ga) % size
            extent *= size
        first = jnp.min(jnp.where(where, position, extent), self.axes, keepdims=True) if self.axes else jnp.where(where, position, extent)
        if size > 1:
            split = first.shape[:ga] + (self.num_groups, size) + first.shape[ga + 1 :]
            first = jnp.broadcast_to(jnp.min(first.reshape(split), ga + 1, keepdims=True), split).reshape(first.shape)
        kept = self.kept_shape(shape)
        first = jnp.broadcast_to(first, kept)
        found = first < extent
        rest = jnp.where(found, first, 0)
        within = rest % size
        rest = rest // size
        index = []
        coords = {}
        for a in reversed(self.axes):
            coords[a] = rest % wshape[a]
            rest = rest // wshape[a]
        for a in range(len(shape)):
            if a in coords:
                index.append(coords[a])
            elif a == ga:
                channel = lax.broadcasted_iota(jnp.int32, kept, a)
                group_size = shape[ga] // self.num_groups
                index.append(channel - channel % group_size + within)
            else:
                index.append(lax.broadcasted_iota(jnp.int32, kept, a))
        spec = explicitly_sharded_axes(x)
        if any(spec):
            # Explicit sharding: the gathered entries are small and kept
            # replicated along the reduced axes (XLA gathers each shard's
            # own entries and combines them, without moving ``x``).
            spec = spec + (None,) * (x.ndim - len(spec))
            out = PartitionSpec(*(None if a in self.axes else spec[a] for a in range(x.ndim)))
            value = x.at[tuple(index)].get(out_sharding=NamedSharding(jax.typeof(x).sharding.mesh, out))
        else:
            value = x[tuple(index)]
        return jnp.where(found, value, 0), found

    def kept_shape(self, shape) -> tuple[int, ...]:
        """The statistics' keepdims shape for an input of ``shape`` (size 1 along ``axes``)."""
        return tuple(1 if a in self.axes else n for a, n in enumerate(shape))


def explicitly_sharded_axes(x) -> tuple:
    """The partition spec of ``x``'s type (explicit sharding), or ``()``."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return tuple(spec) if spec is not None else ()


def take_along(x: jax.Array, axis: int, position: int) -> jax.Array:
    """The entry at static ``position`` along ``axis`` (kept, size 1), also for explicitly sharded axes.

    An axis sharded over D devices in the array's type (explicit sharding)
    cannot be sliced directly: it is split as (D, n/D), every shard's entry at
    ``position``'s offset within its shard taken (one entry per device), that
    small array made replicated along the axis, and the owning shard's entry
    kept. Only D entries per set cross devices.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    names = spec[axis] if spec is not None and axis < len(spec) else None
    if names is None:
        return lax.slice_in_dim(x, position, position + 1, axis=axis)
    names = names if isinstance(names, tuple) else (names,)
    shards = math.prod(sharding.mesh.shape[n] for n in names)
    shape = x.shape
    per_shard = shape[axis] // shards
    owner, offset = divmod(position, per_shard)
    heads = x.reshape(shape[:axis] + (shards, per_shard) + shape[axis + 1 :])
    heads = lax.slice_in_dim(heads, offset, offset + 1, axis=axis + 1)
    spec = tuple(spec) + (None,) * (x.ndim - len(spec))
    replicated = PartitionSpec(*(spec[:axis] + (None, None) + spec[axis + 1 :]))
    heads = jax.sharding.reshard(heads, NamedSharding(sharding.mesh, replicated))
    return lax.slice_in_dim(heads, owner, owner + 1, axis=axis).reshape(shape[:axis] + (1,) + shape[axis + 1 :])


class Moments(NamedTuple):
    """Statistics of each reduction set, keepdims shapes, compute dtype.

    The mean is split as ``shift + mean_shifted`` so that ``x − mean`` can be
    formed exactly as ``(x − shift) − mean_shifted``.

    Attributes:
      shift: a value close to the mean (no gradient); zero when uncentered.
      mean_shifted: ``E[x − shift]``; zero when uncentered.
      var: ``E[(x − mean)²]`` (biased), or ``E[x²]`` when uncentered.
      count: entries in each set (float), after masking; may be 0.
    """

    shift: jax.Array
    mean_shifted: jax.Array
    var: jax.Array
    count: jax.Array

    @property
    def mean(self) -> jax.Array:
        """The mean itself, ``shift + mean_shifted`` (rounded once)."""
        return self.shift + self.mean_shifted
