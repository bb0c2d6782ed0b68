"""Argument checks and reduction sets shared by the BatchNorm family.

The family reduces over every axis of ``x`` except the channel axis, and
across the named axes in ``axis_name``; with ``virtual_batch_size`` (Ghost
BatchNorm) axis 0 is first split into virtual batches that each get their own
statistics. :func:`setup` validates the arguments once and returns a
:class:`BatchSetup` that the schemes share.

Uses: jaxnorm._core (moments, params, validate), jaxnorm._schemes.batch
(running_stats).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction
from jaxnorm._core.params import expand_to
from jaxnorm._schemes.batch.running_stats import BatchStats, check_stats

__all__ = ["BatchSetup", "by_channel", "example_axes", "setup"]


@dataclasses.dataclass(frozen=True)
class BatchSetup:
    """A validated call of a BatchNorm-family function.

    Attributes:
      x: the input, reshaped to ``(G, V, ...)`` with Ghost BatchNorm.
      shape: the caller's input shape (the output is reshaped back to it).
      channel_axis: the channel axis of ``x`` (after any reshape).
      channels: number of channels C.
      scale, bias: expanded to ``x``'s rank, or None.
      where: the mask, expanded like ``x``, or None.
      stats: the running statistics, checked.
      reduction: the sets that share statistics.
      epsilon: checked epsilon.
    """

    x: jax.Array
    shape: tuple
    channel_axis: int
    channels: int
    scale: jax.Array | None
    bias: jax.Array | None
    where: jax.Array | None
    stats: BatchStats
    reduction: Reduction
    epsilon: float

    def channel_shaped(self, p):
        """A ``(C,)`` array placed along the channel axis of ``x``."""
        return expand_to(p, self.x.ndim, (self.channel_axis,))

    def restore(self, y):
        """Undo the Ghost BatchNorm reshape."""
        return y.reshape(self.shape)


def _check_axis_name(fn, axis_name, axis_index_groups):
    """Return the number of members across ``axis_name`` (1 without one)."""
    if axis_name is None:
        if axis_index_groups is not None:
            raise ValueError(
                f"{fn}: axis_index_groups={axis_index_groups!r} needs an axis_name; "
                f"pass the name of the pmap/shard_map/vmap axis, e.g. axis_name='batch'"
            )
        return 1
    try:
        size = lax.axis_size(axis_name)
    except NameError:
        raise ValueError(
            f"{fn}: axis_name={axis_name!r} is not bound by any enclosing "
            f"transformation; call {fn} inside jax.vmap(..., axis_name={axis_name!r}), "
            f"jax.pmap(..., axis_name={axis_name!r}) or jax.shard_map over a mesh "
            f"axis of that name, or pass axis_name=None"
        ) from None
    if axis_index_groups is None:
        return size
    groups = [list(g) for g in axis_index_groups]
    sizes = {len(g) for g in groups}
    members = sorted(i for g in groups for i in g)
    if len(sizes) != 1 or members != list(range(size)):
        raise ValueError(
            f"{fn}: axis_index_groups must split the {size} members of "
            f"axis_name={axis_name!r} into groups of equal size, each member once, "
            f"got {axis_index_groups!r}"
        )
    return sizes.pop()


def setup(
    fn: str,
    x,
    scale,
    bias,
    stats,
    *,
    training,
    channel_axis,
    epsilon,
    axis_name,
    axis_index_groups,
    where,
    virtual_batch_size=None,
    single_value: str = "error",
    allow_complex: bool = False,
) -> BatchSetup:
    """Validate a BatchNorm-family call and build its reduction sets.

    A training reduction over a single value per channel (a ``(1, C)``
    batch, or one example per member inside ``vmap``/``scan`` without
    ``axis_name``) gives ``var = 0``, so the output is ``bias``.

    Args:
      single_value: what such a reduction does: ``"error"`` (PyTorch's
        convention, and the default) raises; ``"warn"`` (the Flax
        convention of :func:`jaxnorm.batch_norm`: flax accepts it) warns.
      allow_complex: accept a complex input (and complex parameters or
        running mean): :func:`jaxnorm.batch_norm` only.

    Raises:
      TypeError: integer inputs or parameters, complex ones where not
        allowed, a non-bool ``training``.
      ValueError: wrong parameter/statistics shapes, bad axes, an unbound
        ``axis_name``, a batch not divisible by ``virtual_batch_size``, or
        (``single_value="error"``) a training reduction over a single value
        per channel.
    """
    training = check.check_training(fn, training)
    x = _check_input(fn, x, allow_complex)
    check.check_min_rank(fn, x, 1, "..., channels", "pass at least a channel axis, e.g. x[None]")
    c_axis = check.canonical_axis(fn, channel_axis, x.ndim, x.shape, name="channel_axis")
    channels = x.shape[c_axis]
    epsilon = check.check_epsilon(fn, epsilon)
    stats = check_stats(fn, stats, channels, x.shape, allow_complex=allow_complex)
    members = _check_axis_name(fn, axis_name, axis_index_groups)
    has_batch = x.ndim >= 2 and c_axis != 0
    allowed = {"per channel": (channels,)}
    if has_batch:
        allowed["per example"] = (x.shape[0], channels)
    params = []
    for name, p in (("scale", scale), ("bias", bias)):
        p, kind = check.check_param(fn, name, p, allowed, x.shape, allow_complex=allow_complex)
        positions = (c_axis,) if kind == "per channel" else (0, c_axis)
        params.append(expand_to(p, x.ndim, positions))
    mask = check.check_where(fn, where, x.shape)

    shape = tuple(x.shape)
    if virtual_batch_size is not None:
        vbs = check.check_positive_int(fn, "virtual_batch_size", virtual_batch_size, example=32)
        if axis_name is not None:
            raise ValueError(
                f"{fn}: virtual_batch_size and axis_name cannot be combined: virtual "
                f"batches split this member's own axis 0; pass only one of them"
            )
        if not has_batch:
            raise ValueError(
                f"{fn}: virtual_batch_size needs a batch axis 0 apart from the channel "
                f"axis, got input shape {shape} with channel_axis={channel_axis}"
            )
        if shape[0] % vbs:
            raise ValueError(
                f"{fn}: a batch of {shape[0]} cannot be split into virtual batches of "
                f"virtual_batch_size={vbs} (input shape {shape}); choose a "
                f"virtual_batch_size dividing {shape[0]}"
            )
        split = (shape[0] // vbs, vbs)

        def ghost(t):
            if t is None:
                return None
            lead = split if t.shape[0] == shape[0] else (1, 1)
            return t.reshape(lead + t.shape[1:])

        x = ghost(x)
        params = [ghost(p) for p in params]
        mask = ghost(mask)
        c_axis += 1
        axes = tuple(a for a in range(1, x.ndim) if a != c_axis)
    else:
        axes = tuple(a for a in range(x.ndim) if a != c_axis)

    per_set = math.prod(x.shape[a] for a in axes) * members
    if training and per_set == 1:
        where_from = (
            f"input shape {shape} (channel_axis={channel_axis}"
            + (f", {members} member(s) across axis_name={axis_name!r}" if axis_name is not None else "")
            + ")"
        )
        if single_value != "warn":
            raise ValueError(
                f"{fn}: expected more than 1 value per channel when training, got {where_from}; "
                f"batch statistics of one value are meaningless: use a larger batch, "
                f"training=False, or a batch-independent norm such as group_norm"
            )
        warnings.warn(
            f"{fn}: one value per channel when training ({where_from}): the batch variance is "
            f"0 and the output is the bias. Inside vmap/scan, pass axis_name to pool the "
            f"members; otherwise use a larger batch or training=False",
            stacklevel=3,
        )
    reduction = Reduction(
        axes,
        axis_name=axis_name,
        axis_index_groups=None if axis_index_groups is None else tuple(tuple(g) for g in axis_index_groups),
    )
    return BatchSetup(x, shape, c_axis, channels, params[0], params[1], mask, stats, reduction, epsilon)


def _check_input(fn, x, allow_complex):
    """``x`` as an array: floating, or complex where ``allow_complex``."""
    check.check_array(fn, "x", x)
    if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
        if allow_complex:
            return jnp.asarray(x)
        raise TypeError(
            f"{fn}: complex inputs are supported by batch_norm only (flax's complex "
            f"BatchNorm), got dtype {jnp.result_type(x)} (shape {np.shape(x)}); normalize the "
            f"real and imaginary parts separately, or use jaxnorm.batch_norm"
        )
    return check.check_floating(fn, x)


def by_channel(t: jax.Array, setup: BatchSetup) -> jax.Array:
    """Keepdims statistics as ``(sets, C)``: one row per virtual batch (or one)."""
    shape = tuple(1 if a in setup.reduction.axes else n for a, n in enumerate(setup.x.shape))
    t = jnp.moveaxis(jnp.broadcast_to(t, shape), setup.channel_axis, -1)
    return t.reshape(-1, setup.channels)


def example_axes(fn: str, s: BatchSetup, batch_axis, channel_axis) -> tuple[int, ...]:
    """The axes of one example's channel: all but ``batch_axis`` and the channels.

    For the family members that mix batch statistics with per-example ones
    (Representative BatchNorm, EvoNorm-B0, Switchable Normalization).
    ``batch_axis=None`` means ``x`` is a single example (inside ``vmap``).

    Raises:
      ValueError: ``batch_axis`` out of range or equal to the channel axis.
    """
    excluded = {s.channel_axis}
    if batch_axis is not None:
        b_axis = check.canonical_axis(fn, batch_axis, s.x.ndim, s.shape, name="batch_axis")
        if b_axis == s.channel_axis:
            raise ValueError(
                f"{fn}: batch_axis={batch_axis} is the channel axis of an input of shape "
                f"{s.shape} (channel_axis={channel_axis}); pass the batch axis, or "
                f"batch_axis=None for a single example"
            )
        excluded.add(b_axis)
    return tuple(a for a in range(s.x.ndim) if a not in excluded)
