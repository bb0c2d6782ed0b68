"""GroupNorm and InstanceNorm: per-example statistics over spatial axes and channel groups."""

from __future__ import annotations

import jax

from jaxnorm import _validate as v
from jaxnorm._implementation import resolve_implementation
from jaxnorm._normalize import NormSpec, normalize
from jaxnorm._params import expand_to
from jaxnorm._stats import Reduction

__all__ = ["group_norm", "instance_norm"]


def _channel_norm(fn, x, scale, bias, *, num_groups, channel_axis, epsilon, where, min_rank):
    """Shared body: normalize each example over its spatial axes and channel groups.

    ``num_groups=None`` means one group per channel (InstanceNorm).
    """
    x = v.check_floating(fn, x)
    if min_rank > 2:
        layout = "batch, spatial..., channels"
        fix = "add a spatial axis, e.g. x[:, None] for (N, 1, C)"
    else:
        layout = "batch, ..., channels"
        fix = "add the batch axis, e.g. x[None] for a batch of one"
    v.check_min_rank(fn, x, min_rank, layout, fix)
    c_axis = v.canonical_axis(fn, channel_axis, x.ndim, x.shape, name="channel_axis")
    if c_axis == 0:
        raise ValueError(
            f"{fn}: channel_axis={channel_axis} is the batch axis of an input of "
            f"shape {tuple(x.shape)}; axis 0 is always the batch, so use "
            f"channel_axis=-1 (NHWC) or channel_axis=1 (NCHW)"
        )
    channels = x.shape[c_axis]
    if num_groups is not None:
        if channels % num_groups:
            raise ValueError(
                f"{fn}: {channels} channels cannot be split into "
                f"num_groups={num_groups} groups (input shape {tuple(x.shape)}, "
                f"channel_axis={channel_axis}); choose num_groups dividing {channels}"
            )
    epsilon = v.check_epsilon(fn, epsilon)
    allowed = {"per channel": (channels,), "per example": (x.shape[0], channels)}
    expanded = []
    for name, p in (("scale", scale), ("bias", bias)):
        p, kind = v.check_param(fn, name, p, allowed, x.shape)
        positions = (c_axis,) if kind == "per channel" else (0, c_axis)
        expanded.append(expand_to(p, x.ndim, positions))
    mask = v.check_where(fn, where, x.shape)

    spatial = tuple(a for a in range(1, x.ndim) if a != c_axis)
    if num_groups is None or num_groups == channels:
        reduction = Reduction(spatial)
    else:
        reduction = Reduction(spatial, group_axis=c_axis, num_groups=num_groups)
    spec = NormSpec(reduction, epsilon, center=True)
    return normalize(x, expanded[0], expanded[1], mask, spec)


def group_norm(
    x,
    scale=None,
    bias=None,
    *,
    num_groups: int,
    channel_axis: int = -1,
    epsilon: float = 1e-5,
    where=None,
    implementation=None,
) -> jax.Array:
    """Group normalization (Wu & He, ECCV 2018).

    The channels are split into ``num_groups`` contiguous groups; each example
    is normalized with the mean and biased variance of each group over all
    its spatial positions::

        y[n, ..., c] = (x − μ[n, g(c)]) / sqrt(σ²[n, g(c)] + ε) · scale + bias

    ``num_groups=1`` is LayerNorm over (spatial, channels); ``num_groups=C``
    is InstanceNorm. Axis 0 is the batch and is never reduced over.

    Args:
      x: floating array ``(N, spatial..., C)``, or ``(N, C, spatial...)`` with
        ``channel_axis=1``; zero or more spatial axes.
      scale: None, per channel ``(C,)``, or per example ``(N, C)``. A
        per-example scale and bias is conditional normalization (conditional
        GN, AdaIN-style style transfer): compute them from a condition and
        pass them here.
      bias: like ``scale``.
      num_groups: number of channel groups; must divide C.
      channel_axis: the channel axis (default -1, channels last).
      epsilon: added to the variance inside the square root.
      where: optional boolean mask of ``x``'s rank, each axis equal to
        ``x``'s or 1. False entries are left out of the statistics (even if
        they hold NaN) and their outputs are 0.
      implementation: None (automatic), ``"xla"``, or ``"triton"``.

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError: for integer inputs or parameters, a non-int num_groups.
      ValueError: num_groups <= 0 or not dividing C, rank < 2, channel_axis
        out of range or 0, parameters or masks of the wrong shape.
    """
    fn = "group_norm"
    resolve_implementation(fn, implementation)
    num_groups = v.check_positive_int(fn, "num_groups", num_groups, example=32)
    return _channel_norm(
        fn, x, scale, bias, num_groups=num_groups, channel_axis=channel_axis,
        epsilon=epsilon, where=where, min_rank=2,
    )


def instance_norm(
    x,
    scale=None,
    bias=None,
    *,
    channel_axis: int = -1,
    epsilon: float = 1e-5,
    where=None,
) -> jax.Array:
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016).

    Each channel of each example is normalized with its own mean and biased
    variance over the spatial axes::

        y[n, ..., c] = (x − μ[n, c]) / sqrt(σ²[n, c] + ε) · scale + bias

    Equal to :func:`group_norm` with ``num_groups=C``. With a per-example
    scale and bias set to a style image's channel std and mean, this is
    adaptive instance normalization (AdaIN, Huang & Belongie 2017).

    Args:
      x: floating array ``(N, spatial..., C)``, or ``(N, C, spatial...)`` with
        ``channel_axis=1``; at least one spatial axis.
      scale: None, per channel ``(C,)``, or per example ``(N, C)``.
      bias: like ``scale``.
      channel_axis: the channel axis (default -1, channels last).
      epsilon: added to the variance inside the square root.
      where: optional boolean mask, as in :func:`group_norm`.

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError, ValueError: as :func:`group_norm` (rank must be >= 3).
    """
    return _channel_norm(
        "instance_norm", x, scale, bias, num_groups=None, channel_axis=channel_axis,
        epsilon=epsilon, where=where, min_rank=3,
    )
