"""Argument checks shared by the per-example channel schemes.

GroupNorm, InstanceNorm, Filter Response Normalization and EvoNorm-S0 all
take a batch on axis 0 (never reduced over), a channel axis, spatial axes
between or after them, and per-channel or per-example parameters.
:func:`channel_setup` validates such a call once.

Uses: jaxnorm._core (moments, params, validate).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction
from jaxnorm._core.params import expand_to

__all__ = ["ChannelSetup", "channel_setup"]


@dataclasses.dataclass(frozen=True)
class ChannelSetup:
    """A validated call of a per-example channel scheme.

    Attributes:
      x: the input (floating).
      channel_axis: non-negative channel axis.
      spatial: the axes other than the batch (0) and the channels.
      params: each parameter expanded to ``x``'s rank (or None), by name.
      where: the mask, or None.
      epsilon: checked epsilon.
    """

    x: jax.Array
    channel_axis: int
    spatial: tuple[int, ...]
    params: dict
    where: jax.Array | None
    epsilon: float

    def reduction(self, num_groups: int | None = None, *, with_channels: bool = False) -> Reduction:
        """The sets over the spatial axes, per channel, per group or over all channels."""
        if with_channels:
            return Reduction(tuple(sorted(self.spatial + (self.channel_axis,))))
        channels = self.x.shape[self.channel_axis]
        if num_groups is None or num_groups == channels:
            return Reduction(self.spatial)
        return Reduction(self.spatial, group_axis=self.channel_axis, num_groups=num_groups)


def channel_setup(
    fn: str,
    x,
    params: dict,
    *,
    channel_axis: int,
    epsilon,
    where=None,
    num_groups: int | None = None,
    min_rank: int = 2,
) -> ChannelSetup:
    """Validate a per-example channel scheme's call.

    Args:
      fn: the public function's name, for messages.
      x: the input, ``(N, ..., C)`` or ``(N, C, ...)``.
      params: name -> parameter (None, ``(C,)`` or ``(N, C)``).
      channel_axis: the channel axis; must not be 0 (the batch).
      epsilon: checked to be a finite number >= 0.
      where: optional boolean mask.
      num_groups: when given, must divide the channel count.
      min_rank: 2 (batch, channels) or 3 (at least one spatial axis).

    Raises:
      TypeError: integer inputs or parameters.
      ValueError: rank too small, channel_axis out of range or 0, groups
        not dividing C, parameters or mask of the wrong shape.
    """
    x = check.check_floating(fn, x)
    if min_rank > 2:
        layout = "batch, spatial..., channels"
        fix = "add a spatial axis, e.g. x[:, None] for (N, 1, C)"
    else:
        layout = "batch, ..., channels"
        fix = "add the batch axis, e.g. x[None] for a batch of one"
    check.check_min_rank(fn, x, min_rank, layout, fix)
    c_axis = check.canonical_axis(fn, channel_axis, x.ndim, x.shape, name="channel_axis")
    if c_axis == 0:
        raise ValueError(
            f"{fn}: channel_axis={channel_axis} is the batch axis of an input of "
            f"shape {tuple(x.shape)}; axis 0 is always the batch, so use "
            f"channel_axis=-1 (NHWC) or channel_axis=1 (NCHW)"
        )
    channels = x.shape[c_axis]
    if num_groups is not None and channels % num_groups:
        raise ValueError(
            f"{fn}: {channels} channels cannot be split into "
            f"num_groups={num_groups} groups (input shape {tuple(x.shape)}, "
            f"channel_axis={channel_axis}); choose num_groups dividing {channels}"
        )
    epsilon = check.check_epsilon(fn, epsilon)
    allowed = {"per channel": (channels,), "per example": (x.shape[0], channels)}
    expanded = {}
    for name, p in params.items():
        p, kind = check.check_param(fn, name, p, allowed, x.shape)
        positions = (c_axis,) if kind == "per channel" else (0, c_axis)
        expanded[name] = expand_to(p, x.ndim, positions)
    mask = check.check_where(fn, where, x.shape)
    spatial = tuple(a for a in range(1, x.ndim) if a != c_axis)
    return ChannelSetup(x, c_axis, spatial, expanded, mask, epsilon)
