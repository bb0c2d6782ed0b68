"""flax.nnx modules for the batch-independent schemes: parameters only, no running statistics.

Uses: jaxnorm, jaxnorm.linen (_common, _per_example), jaxnorm.nnx (_common).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx import initializers

import jaxnorm as jn

# Axis plumbing shared with the linen modules (layout only, no math), so the
# two front ends place parameters and per-example sets identically.
from jaxnorm.linen._common import as_mask, axes_tuple
from jaxnorm.linen._per_example import _feature_layout, _instance_layout, _per_example_sets, instance_call
from jaxnorm.nnx._common import (
    DEFAULT_PROMOTE,
    affine_params,
    check_features,
    extra_param,
    no_axis_name,
    promote,
    single_axis,
    value,
)

__all__ = [
    "EvoNormS0",
    "FilterResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LocalResponseNorm",
    "RMSNorm",
]

_ZEROS = initializers.zeros_init()
_ONES = initializers.ones_init()


def _check_groups(name, num_features, num_groups, group_size):
    """``num_groups`` from flax's ``num_groups``/``group_size`` pair, checked at construction."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{name}: pass exactly one of num_groups and group_size, got num_groups={num_groups!r}, "
            f"group_size={group_size!r}; for group_size pass num_groups=None (its default is 32)"
        )
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 \
                or num_features % group_size:
            raise ValueError(
                f"{name}: group_size={group_size!r} does not divide num_features={num_features}; "
                f"choose a divisor of {num_features}"
            )
        return num_features // group_size
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0 \
            or num_features % num_groups:
        raise ValueError(
            f"{name}: {num_features} channels cannot be split into num_groups={num_groups!r} groups; "
            f"choose num_groups dividing {num_features}"
        )
    return num_groups


def _feature_shaped(x, features, *params):
    """flax.nnx's flat ``(num_features,)`` parameters reshaped to the feature axes' shape."""
    shape = tuple(x.shape[a] for a in features)
    return [None if p is None else jnp.reshape(p, shape) for p in params]


class _Affine(nnx.Module):
    """``scale``/``bias`` of shape ``(num_features,)`` and the attributes flax.nnx stores."""

    def __init__(self, num_features, *, epsilon, dtype, param_dtype, use_bias, use_scale, bias_init,
                 scale_init, rngs, bias_metadata=None, scale_metadata=None):
        affine_params(
            self, num_features, use_scale=use_scale, use_bias=use_bias, scale_init=scale_init,
            bias_init=bias_init, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale


class LayerNorm(_Affine):
    """Layer normalization (Ba et al. 2016), a drop-in for ``flax.nnx.LayerNorm``.

    ``y = (x − E[x]) / sqrt(Var[x] + ε) · scale + bias`` with the statistics
    over ``reduction_axes``, by :func:`jaxnorm.layer_norm`; ``scale`` and
    ``bias`` have shape ``(num_features,)``, the product of the
    ``feature_axes`` sizes, as in flax.nnx, and the feature axes may lie
    anywhere (inside or outside the reduction axes). ``mask`` broadcasts to
    ``x``; masked entries are left out of the statistics and normalized like
    the others, as in flax. ``use_fast_variance`` is accepted and has no
    effect (jaxnorm is always exact). ``axis_name`` is not supported.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        reduction_axes: Any = -1,
        feature_axes: Any = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = DEFAULT_PROMOTE,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        no_axis_name(type(self).__name__, axis_name)
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
            use_scale=use_scale, bias_init=bias_init, scale_init=scale_init, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        x = jnp.asarray(x)
        reduction, features = _feature_layout(name, x, self.reduction_axes, self.feature_axes)
        check_features(name, self.num_features, x, features)
        x, (scale, bias), dtype = promote(self, x, value(self.scale), value(self.bias))
        scale, bias = _feature_shaped(x, features, scale, bias)
        y = jn.layer_norm(
            x, scale, bias, axis=reduction, feature_axes=features, epsilon=self.epsilon, where=as_mask(mask),
            masked_output="normalized",
        )
        return y.astype(dtype)


class RMSNorm(nnx.Module):
    """RMS normalization (Zhang & Sennrich 2019), a drop-in for ``flax.nnx.RMSNorm``.

    ``y = x / sqrt(E[x²] + ε) · scale``, the mean over ``reduction_axes``, by
    :func:`jaxnorm.rms_norm`; arguments, axes and masks as in :class:`LayerNorm`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Any = _ONES,
        reduction_axes: Any = -1,
        feature_axes: Any = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = DEFAULT_PROMOTE,
        rngs: nnx.Rngs,
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        no_axis_name(type(self).__name__, axis_name)
        if use_scale:
            self.scale = nnx.Param(scale_init(rngs.params(), (num_features,), param_dtype), **dict(scale_metadata))
        else:
            self.scale = nnx.data(None)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x, mask=None):
        name = type(self).__name__
        x = jnp.asarray(x)
        reduction, features = _feature_layout(name, x, self.reduction_axes, self.feature_axes)
        check_features(name, self.num_features, x, features)
        x, (scale,), dtype = promote(self, x, value(self.scale))
        (scale,) = _feature_shaped(x, features, scale)
        y = jn.rms_norm(
            x, scale, axis=reduction, feature_axes=features, epsilon=self.epsilon, where=as_mask(mask),
            masked_output="normalized",
        )
        return y.astype(dtype)


class GroupNorm(_Affine):
    """Group normalization (Wu & He 2018), a drop-in for ``flax.nnx.GroupNorm``.

    Channels last; ``num_groups`` (default 32) or ``group_size`` (then pass
    ``num_groups=None``), exactly one of them, checked against
    ``num_features`` at construction. Statistics over ``reduction_axes``
    (default: every axis but the first) and a group of channels, by
    :func:`jaxnorm.group_norm`.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        reduction_axes: Any = None,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = DEFAULT_PROMOTE,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        name = type(self).__name__
        no_axis_name(name, axis_name)
        groups = _check_groups(name, num_features, num_groups, group_size)
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
            use_scale=use_scale, bias_init=bias_init, scale_init=scale_init, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
        )
        self.feature_axis = -1
        self.num_groups = groups
        self.group_size = num_features // groups
        self.reduction_axes = reduction_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        x = jnp.asarray(x)
        check_features(name, self.num_features, x, (x.ndim - 1,))
        if self.reduction_axes is None:
            reduction = tuple(range(1, x.ndim))
        else:
            reduction = axes_tuple(name, "reduction_axes", self.reduction_axes, x.ndim, x.shape)
            if reduction[-1] != x.ndim - 1:
                raise ValueError(
                    f"{name}: reduction_axes={self.reduction_axes!r} must include the last axis "
                    f"(the channels) for an input of shape {tuple(x.shape)}"
                )
        x, (scale, bias), dtype = promote(self, x, value(self.scale), value(self.bias))
        xs, ms, undo = _per_example_sets(x, reduction, as_mask(mask))
        y = jn.group_norm(
            xs, scale, bias, num_groups=self.num_groups, epsilon=self.epsilon, where=ms, masked_output="normalized"
        )
        return undo(y).astype(dtype)


class InstanceNorm(_Affine):
    """Instance normalization (Ulyanov et al. 2016), a drop-in for ``flax.nnx.InstanceNorm``.

    ``y = (x − μ) / sqrt(σ² + ε) · scale + bias`` with the statistics per
    example and feature over every axis but the first (the batch) and
    ``feature_axes`` (one or several; ``num_features`` is the product of
    their sizes), by :func:`jaxnorm.instance_norm` (or
    :func:`jaxnorm.layer_norm` for several feature axes). An input with no
    axis left to reduce, such as ``(N, C)``, outputs ``bias``, as in flax.
    ``feature_axes`` including axis 0 raises ``ValueError``. Masks as in
    :class:`LayerNorm`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        feature_axes: Any = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = DEFAULT_PROMOTE,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        no_axis_name(type(self).__name__, axis_name)
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
            use_scale=use_scale, bias_init=bias_init, scale_init=scale_init, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
        )
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x, *, mask=None):
        name = type(self).__name__
        x = jnp.asarray(x)
        reduction, features = _instance_layout(name, x, self.feature_axes)
        check_features(name, self.num_features, x, features)
        x, (scale, bias), dtype = promote(self, x, value(self.scale), value(self.bias))
        scale, bias = _feature_shaped(x, features, scale, bias)
        return instance_call(x, scale, bias, as_mask(mask), reduction, features, self.epsilon).astype(dtype)


class FilterResponseNorm(_Affine):
    """Filter response normalization with TLU (Singh & Krishnan 2020).

    Parameters ``scale`` (ones), ``bias`` (zeros) and, with ``use_tau``, the
    TLU threshold ``tau`` (``tau_init``, zeros), each ``(num_features,)``;
    calls :func:`jaxnorm.filter_response_norm`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        channel_axis: int = -1,
        use_tau: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        tau_init: Any = _ZEROS,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
            use_scale=use_scale, bias_init=bias_init, scale_init=scale_init, rngs=rngs,
        )
        self.tau = extra_param(tau_init, (num_features,), param_dtype, rngs) if use_tau else nnx.data(None)
        self.channel_axis = channel_axis
        self.use_tau = use_tau

    def __call__(self, x):
        name = type(self).__name__
        x = jnp.asarray(x)
        c = single_axis(name, "channel_axis", self.channel_axis, x.ndim, x.shape)
        check_features(name, self.num_features, x, (c,))
        x, (scale, bias, tau), dtype = promote(self, x, value(self.scale), value(self.bias), value(self.tau))
        return jn.filter_response_norm(x, scale, bias, tau, channel_axis=c, epsilon=self.epsilon).astype(dtype)


class EvoNormS0(_Affine):
    """EvoNorm-S0 (Liu et al. 2020): parameters ``scale``, ``bias`` and the slope ``v`` (``v_init``, ones).

    Calls :func:`jaxnorm.evonorm_s0` with ``num_groups`` (default 32, checked
    against ``num_features`` at construction).
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        *,
        epsilon: float = 1e-5,
        channel_axis: int = -1,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        v_init: Any = _ONES,
        rngs: nnx.Rngs,
    ):
        _check_groups(type(self).__name__, num_features, num_groups, None)
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
            use_scale=use_scale, bias_init=bias_init, scale_init=scale_init, rngs=rngs,
        )
        self.v = extra_param(v_init, (num_features,), param_dtype, rngs)
        self.num_groups = num_groups
        self.channel_axis = channel_axis

    def __call__(self, x):
        name = type(self).__name__
        x = jnp.asarray(x)
        c = single_axis(name, "channel_axis", self.channel_axis, x.ndim, x.shape)
        check_features(name, self.num_features, x, (c,))
        x, (scale, bias, v), dtype = promote(self, x, value(self.scale), value(self.bias), value(self.v))
        y = jn.evonorm_s0(x, scale, bias, v, num_groups=self.num_groups, channel_axis=c, epsilon=self.epsilon)
        return y.astype(dtype)


class LocalResponseNorm(nnx.Module):
    """Local response normalization across channels, PyTorch's formula; no parameters.

    Calls :func:`jaxnorm.local_response_norm`.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                 channel_axis: int = -1):
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.channel_axis = channel_axis

    def __call__(self, x):
        return jn.local_response_norm(
            x, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k, channel_axis=self.channel_axis
        )
