"""Representative BatchNorm (Gao et al. 2021): BatchNorm with feature calibration."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _validate as v
from jaxnorm._batch_norm import fold_batch
from jaxnorm._batch_setup import example_axes, setup
from jaxnorm._batch_stats import DEFAULT_MOMENTUM, resolve_momentum
from jaxnorm._collectives import all_gather
from jaxnorm._remat import keep_statistics
from jaxnorm._pooled import pooled_spec
from jaxnorm._representative_core import rbn_affine
from jaxnorm._stats import Moments, compute_dtype

__all__ = ["RBNCalibration", "representative_batch_norm"]


class RBNCalibration(NamedTuple):
    """The calibration weights of Representative BatchNorm, each ``(C,)``.

    ``RBNCalibration.init(C)`` gives the paper's initial values: centering
    weight 0, scaling weight 0, scaling bias 1 (so the scaling factor starts
    at sigmoid(1) ≈ 0.731, not 1: RBN is not BatchNorm at initialization).
    """

    center_weight: jax.Array
    scale_weight: jax.Array
    scale_bias: jax.Array

    @classmethod
    def init(cls, num_features: int, dtype=jnp.float32) -> RBNCalibration:
        """The reference implementation's initial values (0, 0, 1)."""
        v.check_positive_int("RBNCalibration.init", "num_features", num_features, example=64)
        return cls(
            jnp.zeros((num_features,), dtype),
            jnp.zeros((num_features,), dtype),
            jnp.ones((num_features,), dtype),
        )


def representative_batch_norm(
    x,
    scale,
    bias,
    stats,
    *,
    center_weight,
    scale_weight,
    scale_bias,
    training: bool,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    batch_axis: int | None = 0,
    convention: str = "flax",
):
    """Representative Batch Normalization (Gao et al., CVPR 2021).

    With ``K(·)`` the mean of each example's channel over its spatial axes
    (every axis but ``batch_axis`` and ``channel_axis``)::

        x' = x + w_m · K(x)                      centering calibration
        x̂ = BatchNorm(x')                        batch statistics, no affine
        s = sigmoid(w_v · K(x̂) + b_v)            scaling calibration
        y = scale · s · x̂ + bias

    The running statistics are those of ``x'``, updated as
    :func:`jaxnorm.batch_norm` does (``convention``, ``momentum``); inference
    normalizes ``x'`` with them. The input is never modified (the reference
    code adds to it in place). Initial calibration values: see
    :class:`RBNCalibration`. ``x'`` is formed relative to one sample per
    channel (across members, ``axis_name``, the first member's, gathered),
    so it stays exact at large means.

    Args:
      x, scale, bias, stats, training, momentum, epsilon, channel_axis,
        axis_name, axis_index_groups, convention: as in
        :func:`jaxnorm.batch_norm`.
      center_weight: ``(C,)`` centering weight ``w_m``.
      scale_weight: ``(C,)`` scaling weight ``w_v``.
      scale_bias: ``(C,)`` scaling bias ``b_v``.
      batch_axis: the batch axis of ``x`` (default 0), excluded from ``K``;
        None when ``x`` is a single example (inside ``jax.vmap`` with
        ``axis_name``). Per-example ``scale``/``bias`` ``(N, C)`` always
        index axis 0.

    Returns:
      ``(y, new_stats)`` as :func:`jaxnorm.batch_norm`.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.batch_norm`, and calibration
        weights not of shape ``(C,)``, ``batch_axis`` equal to the channel
        axis or out of range.
    """
    fn = "representative_batch_norm"
    weights = resolve_momentum(fn, momentum, convention)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups,
        where=None,
    )
    allowed = {"per channel": (s.channels,)}
    w_m, w_v, b_v = (
        s.channel_shaped(v.check_param(fn, name, p, allowed, s.shape)[0])
        for name, p in (("center_weight", center_weight), ("scale_weight", scale_weight), ("scale_bias", scale_bias))
    )
    spec = pooled_spec(s, example_axes(fn, s, batch_axis, channel_axis), training)

    def rbn(x, scale, bias, w_m, w_v, b_v):
        dtype = compute_dtype(x.dtype)
        xc = x.astype(dtype)
        # 16-bit calibration weights are used in the compute dtype (rounded once, at the output).
        w_m, w_v, b_v = (w.astype(jnp.promote_types(w.dtype, dtype)) for w in (w_m, w_v, b_v))
        # x enters relative to an offset o (one sample per channel), which
        # keeps every term small at large means; x' is then relative to
        # (1 + w_m)·o. Across members (axis_name) the offset must be common:
        # member 0's sample, gathered (a (C,) collective).
        offset = lax.stop_gradient(s.reduction.first(xc))
        if axis_name is not None:
            offset = all_gather(offset, axis_name, axis_index_groups)[0]
        moved = (1 + w_m) * offset
        run_mean = run_var = None
        if not training:
            run_mean = s.channel_shaped(s.stats.mean.astype(dtype)) - moved
            run_var = s.channel_shaped(s.stats.var.astype(dtype))
        y, batch = rbn_affine(spec, xc, offset, scale, bias, w_m, w_v, b_v, run_mean, run_var)
        new = s.stats
        if training:
            mo = Moments(*batch)
            mo = mo._replace(shift=mo.shift + moved)
            new = fold_batch(s, mo, weights=weights, convention=convention, fn=fn)
        return y.astype(x.dtype), new

    # Reverse mode keeps x and the per-(example, channel) coefficients;
    # everything full-size is recomputed.
    return keep_statistics(rbn)(s.x, s.scale, s.bias, w_m, w_v, b_v)
