"""EvoNorm-B0 and EvoNorm-S0 (Liu et al. 2020): normalization and activation in one layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm import _validate as check
from jaxnorm._batch_norm import fold_batch
from jaxnorm._batch_setup import example_axes, setup
from jaxnorm._batch_stats import DEFAULT_MOMENTUM, resolve_momentum
from jaxnorm._channel_setup import channel_setup
from jaxnorm._evonorm_b0_core import b0_divide
from jaxnorm._evonorm_s0_core import s0_gate
from jaxnorm._params import apply_affine
from jaxnorm._pooled import pooled_spec
from jaxnorm._remat import keep_statistics
from jaxnorm._stats import Moments, compute_dtype

__all__ = ["evonorm_b0", "evonorm_s0"]


def evonorm_s0(
    x,
    scale=None,
    bias=None,
    v=None,
    *,
    num_groups: int = 32,
    channel_axis: int = -1,
    epsilon: float = 1e-5,
) -> jax.Array:
    """EvoNorm-S0 (Liu, Brock, Simonyan & Le, NeurIPS 2020), batch-independent.

    A SiLU-like numerator over the group standard deviation of GroupNorm
    (spatial axes and a group of channels, per example)::

        y = x · sigmoid(v · x) / sqrt(σ²_group(x) + ε) · scale + bias

    The variance is the exact shifted moment of :func:`jaxnorm.group_norm`;
    the paper's initial values are ``v = scale = 1``, ``bias = 0``.

    Args:
      x: floating array ``(N, spatial..., C)`` or ``(N, C, spatial...)``.
      scale, bias: None, ``(C,)`` or per example ``(N, C)``.
      v: the learned sigmoid slope, like ``scale``; None means 1.
      num_groups: channel groups; must divide C (the paper uses 32).
      channel_axis: the channel axis (default -1).
      epsilon: added to the variance inside the square root.

    Returns:
      ``y`` with ``x``'s shape and dtype.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.group_norm`, and ``v`` of
        the wrong shape.
    """
    fn = "evonorm_s0"
    num_groups = check.check_positive_int(fn, "num_groups", num_groups, example=32)
    s = channel_setup(
        fn, x, {"scale": scale, "bias": bias, "v": v}, channel_axis=channel_axis,
        epsilon=epsilon, num_groups=num_groups,
    )
    reduction = s.reduction(num_groups)

    def s0(x, scale, bias, v):
        xc = x.astype(compute_dtype(x.dtype))
        slope = jnp.ones((1,) * x.ndim, xc.dtype) if v is None else v
        y = s0_gate(reduction, s.epsilon, xc, slope)
        return apply_affine(y, scale, bias).astype(x.dtype)

    # Reverse mode keeps x and the group variances; the gate is recomputed.
    return keep_statistics(s0)(s.x, s.params["scale"], s.params["bias"], s.params["v"])


def evonorm_b0(
    x,
    scale,
    bias,
    v,
    stats,
    *,
    training: bool,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    batch_axis: int | None = 0,
    convention: str = "flax",
):
    """EvoNorm-B0 (Liu, Brock, Simonyan & Le, NeurIPS 2020), batch-dependent.

    The larger of the batch standard deviation and a per-example term
    divides the input::

        y = x / max(sqrt(σ²_batch + ε), v · x + sqrt(σ²_instance(x) + ε)) · scale + bias

    ``σ²_batch`` is BatchNorm's per-channel variance (every axis but
    ``channel_axis``, across ``axis_name``) in training and the running
    variance in inference; ``σ²_instance`` is each example's per-channel
    variance over its spatial axes. Running statistics are updated as in
    :func:`jaxnorm.batch_norm` (only the variance is used). The paper's
    initial values are ``v = scale = 1``, ``bias = 0``.

    Args:
      x, scale, bias, stats, training, momentum, epsilon, channel_axis,
        axis_name, axis_index_groups, convention: as in
        :func:`jaxnorm.batch_norm`.
      v: ``(C,)`` learned slope of the per-example term; None means 1.
      batch_axis: the batch axis (default 0), excluded from the instance
        variance; None when ``x`` is a single example (inside ``vmap``).
        Per-example ``scale``/``bias`` ``(N, C)`` always index axis 0.

    Returns:
      ``(y, new_stats)`` as :func:`jaxnorm.batch_norm`.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.batch_norm`, and ``v`` not
        of shape ``(C,)``, ``batch_axis`` out of range or the channel axis.
    """
    fn = "evonorm_b0"
    weights = resolve_momentum(fn, momentum, convention)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups, where=None,
    )
    slope, _ = check.check_param(fn, "v", v, {"per channel": (s.channels,)}, s.shape)
    slope = 1 if slope is None else s.channel_shaped(slope)
    spec = pooled_spec(s, example_axes(fn, s, batch_axis, channel_axis), training)

    def b0(x, scale, bias, slope):
        xc = x.astype(compute_dtype(x.dtype))
        run_var = s.channel_shaped(s.stats.var.astype(xc.dtype))
        y, batch = b0_divide(spec, xc, scale, bias, jnp.asarray(slope, xc.dtype), run_var)
        new = fold_batch(s, Moments(*batch), weights=weights, convention=convention, fn=fn) if training else s.stats
        return y.astype(x.dtype), new

    # Reverse mode keeps x and the variances; the max's branches are recomputed.
    return keep_statistics(b0)(s.x, s.scale, s.bias, slope)
