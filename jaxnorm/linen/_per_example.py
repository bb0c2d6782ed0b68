"""flax.linen modules for the batch-independent schemes: no running statistics.

Uses: jaxnorm, jaxnorm.linen (_common).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

import jaxnorm as jn
from jaxnorm.linen._common import affine_params, as_mask, axes_tuple, no_axis_name, output_dtype, single_axis

__all__ = [
    "EvoNormS0",
    "FilterResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LocalResponseNorm",
    "RMSNorm",
]

Axes = Any


def _feature_layout(owner, x, reduction_axes, feature_axes):
    """``(reduction, features)``: flax's axes as sorted non-negative tuples (repeats merged).

    ``features`` may be empty (one scalar scale and bias) and need not lie
    within ``reduction`` (e.g. statistics over axis 1, scale along axis 2).
    """
    reduction = axes_tuple(owner, "reduction_axes", reduction_axes, x.ndim, x.shape)
    features = axes_tuple(owner, "feature_axes", feature_axes, x.ndim, x.shape)
    return reduction, features


def _instance_layout(owner, x, feature_axes):
    """``(reduction, features)`` of flax's InstanceNorm: every axis but the batch (0) and the features."""
    features = axes_tuple(owner, "feature_axes", feature_axes, x.ndim, x.shape)
    if 0 in features:
        raise ValueError(
            f"{owner}: feature_axes={feature_axes!r} includes axis 0 of an input of shape "
            f"{tuple(x.shape)}, but axis 0 is the batch, which InstanceNorm never normalizes "
            f"over or scales along; name channel axes only, e.g. feature_axes=-1"
        )
    return tuple(a for a in range(1, x.ndim) if a not in features), features


def instance_call(x, scale, bias, mask, reduction, features, epsilon):
    """InstanceNorm with flax's axes through the core (layout only).

    One channel axis with spatial axes: :func:`jaxnorm.instance_norm`.
    Several feature axes: :func:`jaxnorm.layer_norm` over the other
    non-batch axes with ``feature_axes``. No axis left to reduce (e.g. an
    ``(N, C)`` input): every set is one entry, which
    :func:`jaxnorm.group_norm` with one group per feature computes on the
    input flattened to ``(N, F)`` (the output is ``bias``, as in flax).
    """
    kwargs = {"epsilon": epsilon, "where": mask, "masked_output": "normalized"}
    if not reduction:
        n, size = x.shape[0], math.prod(x.shape[1:])
        flat = [None if p is None else p.reshape(size) for p in (scale, bias)]
        m = None if mask is None else jnp.broadcast_to(mask, x.shape).reshape(n, size)
        y = jn.group_norm(x.reshape(n, size), *flat, num_groups=size, **{**kwargs, "where": m})
        return y.reshape(x.shape)
    if len(features) == 1:
        return jn.instance_norm(x, scale, bias, channel_axis=features[0], **kwargs)
    return jn.layer_norm(x, scale, bias, axis=reduction, feature_axes=features, **kwargs)


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al. 2016), a drop-in for ``flax.linen.LayerNorm``.

    ``y = (x − E[x]) / sqrt(Var[x] + ε) · scale + bias`` with the statistics
    over ``reduction_axes``, by :func:`jaxnorm.layer_norm`; ``scale`` and
    ``bias`` have the shape of ``feature_axes``, which may lie anywhere
    (inside or outside the reduction axes). Same fields and defaults as
    flax.linen's (``use_fast_variance`` and ``force_float32_reductions`` are
    accepted for compatibility: jaxnorm's statistics are always exact and at
    least float32). ``mask`` broadcasts to ``x``; masked entries are left
    out of the statistics and normalized like the others, as in flax.
    ``axis_name`` is not supported.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: Any = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @nn.compact
    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        no_axis_name(name, self.axis_name)
        x = jnp.asarray(x)
        reduction, features = _feature_layout(name, x, self.reduction_axes, self.feature_axes)
        scale, bias = affine_params(self, tuple(x.shape[a] for a in features))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        y = jn.layer_norm(
            x, scale, bias, axis=reduction, feature_axes=features, epsilon=self.epsilon, where=as_mask(mask),
            masked_output="normalized",
        )
        return y.astype(dtype)


class RMSNorm(nn.Module):
    """RMS normalization (Zhang & Sennrich 2019), a drop-in for ``flax.linen.RMSNorm``.

    ``y = x / sqrt(E[x²] + ε) · scale``, the mean over ``reduction_axes``, by
    :func:`jaxnorm.rms_norm`; fields, axes and masks as in :class:`LayerNorm`.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Any = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: Any = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @nn.compact
    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        no_axis_name(name, self.axis_name)
        x = jnp.asarray(x)
        reduction, features = _feature_layout(name, x, self.reduction_axes, self.feature_axes)
        scale, _ = affine_params(self, tuple(x.shape[a] for a in features))
        x, dtype = output_dtype(self.dtype, x, scale)
        y = jn.rms_norm(
            x, scale, axis=reduction, feature_axes=features, epsilon=self.epsilon, where=as_mask(mask),
            masked_output="normalized",
        )
        return y.astype(dtype)


def _per_example_sets(x, reduction, mask):
    """Move the axes not reduced over to the front and merge them into one batch axis.

    Returns ``(x, mask, undo)`` for a core call that treats axis 0 as the batch.
    """
    kept = tuple(a for a in range(x.ndim) if a not in reduction)
    if kept == (0,):
        return x, mask, lambda y: y
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    perm = kept + tuple(reduction)
    lead = math.prod(x.shape[a] for a in kept)
    moved_shape = tuple(x.shape[a] for a in perm)

    def move(t):
        return None if t is None else jnp.transpose(t, perm).reshape((lead,) + moved_shape[len(kept):])

    inverse = [perm.index(a) for a in range(x.ndim)]
    return move(x), move(mask), lambda y: jnp.transpose(y.reshape(moved_shape), inverse)


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018), a drop-in for ``flax.linen.GroupNorm``.

    Channels last; ``num_groups`` (default 32) or ``group_size`` (then pass
    ``num_groups=None``), exactly one of them. Statistics over
    ``reduction_axes`` (default: every axis but the first) and a group of
    channels, by :func:`jaxnorm.group_norm`. Other fields as flax.linen's;
    masks as in :class:`LayerNorm`.
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    reduction_axes: Axes = None
    axis_name: Any = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @nn.compact
    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        no_axis_name(name, self.axis_name)
        x = jnp.asarray(x)
        channels = x.shape[-1]
        if (self.num_groups is None) == (self.group_size is None):
            raise ValueError(
                f"{name}: pass exactly one of num_groups and group_size, got "
                f"num_groups={self.num_groups!r}, group_size={self.group_size!r}; for "
                f"group_size pass num_groups=None (its default is 32)"
            )
        if self.group_size is not None:
            if not isinstance(self.group_size, int) or self.group_size <= 0 or channels % self.group_size:
                raise ValueError(
                    f"{name}: group_size={self.group_size!r} does not divide the {channels} "
                    f"channels of an input of shape {tuple(x.shape)}; choose a divisor of {channels}"
                )
            num_groups = channels // self.group_size
        else:
            num_groups = self.num_groups
        if self.reduction_axes is None:
            reduction = tuple(range(1, x.ndim))
        else:
            reduction = axes_tuple(name, "reduction_axes", self.reduction_axes, x.ndim, x.shape)
            if reduction[-1] != x.ndim - 1:
                raise ValueError(
                    f"{name}: reduction_axes={self.reduction_axes!r} must include the last axis "
                    f"(the channels) for an input of shape {tuple(x.shape)}"
                )
        scale, bias = affine_params(self, (channels,))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        xs, ms, undo = _per_example_sets(x, reduction, as_mask(mask))
        y = jn.group_norm(
            xs, scale, bias, num_groups=num_groups, epsilon=self.epsilon, where=ms, masked_output="normalized"
        )
        return undo(y).astype(dtype)


class InstanceNorm(nn.Module):
    """Instance normalization (Ulyanov et al. 2016), a drop-in for ``flax.linen.InstanceNorm``.

    ``y = (x − μ) / sqrt(σ² + ε) · scale + bias`` with the statistics per
    example and feature over every axis but the first (the batch) and
    ``feature_axes`` (one or several axes; ``scale`` and ``bias`` have their
    shape), by :func:`jaxnorm.instance_norm` (or :func:`jaxnorm.layer_norm`
    for several feature axes). An input with no axis left to reduce, such as
    ``(N, C)``, outputs ``bias``, as in flax. ``feature_axes`` including axis
    0 raises ``ValueError``. Masks as in :class:`LayerNorm`.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    feature_axes: Axes = -1
    axis_name: Any = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @nn.compact
    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        no_axis_name(name, self.axis_name)
        x = jnp.asarray(x)
        reduction, features = _instance_layout(name, x, self.feature_axes)
        scale, bias = affine_params(self, tuple(x.shape[a] for a in features))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        return instance_call(x, scale, bias, as_mask(mask), reduction, features, self.epsilon).astype(dtype)


class FilterResponseNorm(nn.Module):
    """Filter response normalization with TLU (Singh & Krishnan 2020).

    Parameters ``scale`` (ones), ``bias`` (zeros) and, with ``use_tau``, the
    TLU threshold ``tau`` (zeros), each ``(C,)``; calls
    :func:`jaxnorm.filter_response_norm`.
    """

    epsilon: float = 1e-6
    channel_axis: int = -1
    use_tau: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    tau_init: Any = initializers.zeros

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        c = single_axis(type(self).__name__, "channel_axis", self.channel_axis, x.ndim, x.shape)
        scale, bias = affine_params(self, (x.shape[c],))
        tau = self.param("tau", self.tau_init, (x.shape[c],), self.param_dtype) if self.use_tau else None
        x, dtype = output_dtype(self.dtype, x, scale, bias, tau)
        return jn.filter_response_norm(x, scale, bias, tau, channel_axis=c, epsilon=self.epsilon).astype(dtype)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020): parameters ``scale``, ``bias`` and the slope ``v`` (ones).

    Calls :func:`jaxnorm.evonorm_s0` with ``num_groups`` (default 32).
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    channel_axis: int = -1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    v_init: Any = initializers.ones

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        c = single_axis(type(self).__name__, "channel_axis", self.channel_axis, x.ndim, x.shape)
        scale, bias = affine_params(self, (x.shape[c],))
        v = self.param("v", self.v_init, (x.shape[c],), self.param_dtype)
        x, dtype = output_dtype(self.dtype, x, scale, bias, v)
        y = jn.evonorm_s0(x, scale, bias, v, num_groups=self.num_groups, channel_axis=c, epsilon=self.epsilon)
        return y.astype(dtype)


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels, PyTorch's formula; no parameters.

    Calls :func:`jaxnorm.local_response_norm`.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    channel_axis: int = -1

    @nn.compact
    def __call__(self, x):
        return jn.local_response_norm(
            x, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k, channel_axis=self.channel_axis
        )
