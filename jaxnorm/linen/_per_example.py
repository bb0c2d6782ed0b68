"""flax.linen modules for the batch-independent schemes: no running statistics."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

import jaxnorm as jn
from jaxnorm.linen._common import affine_params, no_axis_name, output_dtype, single_axis

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


def _axes(ndim, axes):
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted(a % ndim for a in axes))


def _over_axes(x, scale, bias, reduction, features, owner="LayerNorm"):
    """Place ``features``-shaped parameters against the normalized axes' shape."""
    if not set(features) <= set(reduction):
        raise NotImplementedError(
            f"{owner}: feature_axes={features} must lie within reduction_axes={reduction} "
            f"(input shape {tuple(x.shape)}); jaxnorm's parameters cover the normalized axes, "
            f"so list the feature axes among the reduction axes"
        )
    shape = tuple(x.shape[a] if a in features else 1 for a in reduction)
    full = tuple(x.shape[a] for a in reduction)
    return [None if p is None else jnp.broadcast_to(p.reshape(shape), full) for p in (scale, bias)]


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al. 2016), a drop-in for ``flax.linen.LayerNorm``.

    Calls :func:`jaxnorm.layer_norm` over ``reduction_axes``; ``scale`` and
    ``bias`` have the shape of ``feature_axes``. Same fields and defaults as
    flax.linen's (``use_fast_variance`` and ``force_float32_reductions`` are
    accepted for compatibility: jaxnorm's statistics are always exact and at
    least float32). ``axis_name`` is not supported.
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
        no_axis_name(type(self).__name__, self.axis_name)
        x = jnp.asarray(x)
        reduction, features = _axes(x.ndim, self.reduction_axes), _axes(x.ndim, self.feature_axes)
        scale, bias = affine_params(self, tuple(x.shape[a] for a in features))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        scale, bias = _over_axes(x, scale, bias, reduction, features, owner=type(self).__name__)
        return jn.layer_norm(x, scale, bias, axis=reduction, epsilon=self.epsilon, where=mask).astype(dtype)


class RMSNorm(nn.Module):
    """RMS normalization (Zhang & Sennrich 2019), a drop-in for ``flax.linen.RMSNorm``.

    Calls :func:`jaxnorm.rms_norm`; fields as flax.linen's (see :class:`LayerNorm`).
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
        no_axis_name(type(self).__name__, self.axis_name)
        x = jnp.asarray(x)
        reduction, features = _axes(x.ndim, self.reduction_axes), _axes(x.ndim, self.feature_axes)
        scale, _ = affine_params(self, tuple(x.shape[a] for a in features))
        x, dtype = output_dtype(self.dtype, x, scale)
        scale, _ = _over_axes(x, scale, None, reduction, features, owner=type(self).__name__)
        return jn.rms_norm(x, scale, axis=reduction, epsilon=self.epsilon, where=mask).astype(dtype)


def _per_example_sets(x, reduction, mask):
    """Move the axes not reduced over to the front and merge them into one batch axis.

    Returns ``(x, mask, undo)`` for a core call that treats axis 0 as the batch.
    """
    kept = tuple(a for a in range(x.ndim) if a not in reduction)
    if kept == (0,):
        return x, mask, lambda y: y
    perm = kept + tuple(reduction)
    lead = math.prod(x.shape[a] for a in kept)
    moved_shape = tuple(x.shape[a] for a in perm)

    def move(t):
        t = jnp.broadcast_to(t, x.shape) if t is not None and t.shape != x.shape else t
        return None if t is None else jnp.transpose(t, perm).reshape((lead,) + moved_shape[len(kept):])

    inverse = [perm.index(a) for a in range(x.ndim)]
    return move(x), move(mask), lambda y: jnp.transpose(y.reshape(moved_shape), inverse)


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018), a drop-in for ``flax.linen.GroupNorm``.

    Channels last; ``num_groups`` (default 32) or ``group_size`` (then pass
    ``num_groups=None``), exactly one of them. Statistics over
    ``reduction_axes`` (default: every axis but the first) and a group of
    channels, by :func:`jaxnorm.group_norm`. Other fields as flax.linen's.
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
            reduction = _axes(x.ndim, self.reduction_axes)
            if reduction[-1] != x.ndim - 1:
                raise ValueError(
                    f"{name}: reduction_axes={self.reduction_axes!r} must include the last axis "
                    f"(the channels) for an input of shape {tuple(x.shape)}"
                )
        scale, bias = affine_params(self, (channels,))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        xs, ms, undo = _per_example_sets(x, reduction, mask)
        y = jn.group_norm(xs, scale, bias, num_groups=num_groups, epsilon=self.epsilon, where=ms)
        return undo(y).astype(dtype)


class InstanceNorm(nn.Module):
    """Instance normalization (Ulyanov et al. 2016), a drop-in for ``flax.linen.InstanceNorm``.

    Statistics per example and channel (``feature_axes``, one axis) over the
    other axes but the first, by :func:`jaxnorm.instance_norm`.
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
        c = single_axis(name, "feature_axes", self.feature_axes, x.ndim, x.shape)
        scale, bias = affine_params(self, (x.shape[c],))
        x, dtype = output_dtype(self.dtype, x, scale, bias)
        return jn.instance_norm(x, scale, bias, channel_axis=c, epsilon=self.epsilon, where=mask).astype(dtype)


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
