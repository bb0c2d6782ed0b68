"""flax.nnx modules for the BatchNorm family: running statistics as ``nnx.BatchStat``.

Uses: jaxnorm, jaxnorm._schemes.batch (running_stats), jaxnorm.linen
(_common), jaxnorm.nnx (_common).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx import initializers

import jaxnorm as jn
from jaxnorm._schemes.batch.running_stats import DEFAULT_MOMENTUM
from jaxnorm.linen._common import as_mask
from jaxnorm.nnx._common import (
    DEFAULT_PROMOTE,
    affine_params,
    check_features,
    extra_param,
    promote,
    single_axis,
    value,
)
from jaxnorm.nnx._common import use_running_average as _use_running_average

_ZEROS = initializers.zeros_init()
_ONES = initializers.ones_init()

__all__ = ["BatchNorm", "BatchRenorm", "EvoNormB0", "RepresentativeBatchNorm", "SwitchableNorm"]


class _BatchModule(nnx.Module):
    """Constructor arguments and plumbing shared by the family.

    ``mean`` (zeros) and ``var`` (ones) are float32 ``nnx.BatchStat`` of shape
    ``(num_features,)``, as in ``flax.nnx.BatchNorm``. Subclasses call
    :meth:`_run` with ``core(x, scale, bias, stats, kwargs) -> (y, new_stats)``
    making the one core call. The statistics are written back (in their own
    dtype, so jit carries stay stable, as flax.nnx does) only in training.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = DEFAULT_MOMENTUM,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = DEFAULT_PROMOTE,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        affine_params(
            self, num_features, use_scale=use_scale, use_bias=use_bias, scale_init=scale_init,
            bias_init=bias_init, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance  # accepted; jaxnorm's statistics are always exact
        self.promote_dtype = promote_dtype

    def set_view(self, use_running_average: bool | None = None):
        """Set the mode for ``nnx.view(model, use_running_average=...)`` (and ``nnx.view_info``).

        Args:
          use_running_average: if True, normalize with the stored running
            statistics; if False, with the batch statistics, updating the
            running ones; None leaves the mode unchanged.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def _run(self, x, use_running_average, core, *extra_params):
        name = type(self).__name__
        training = not _use_running_average(self, use_running_average)
        x = jnp.asarray(x)
        c = single_axis(name, "axis", self.axis, x.ndim, x.shape)
        check_features(name, self.num_features, x, (c,))
        # flax.nnx promotes x with the running statistics too (so does this).
        x, (mean, var, scale, bias, *_), dtype = promote(
            self, x, value(self.mean), value(self.var), value(self.scale), value(self.bias), *extra_params
        )
        kwargs = {
            "training": training, "momentum": self.momentum, "epsilon": self.epsilon,
            "channel_axis": c, "axis_name": self.axis_name, "axis_index_groups": self.axis_index_groups,
        }
        batches = getattr(self, "count", None)
        stats = jn.BatchStats(mean, var, None if batches is None else batches[...])
        y, new = core(x, scale, bias, stats, kwargs)
        if training:
            # The core's new statistics carry no gradient (as flax.nnx stores them).
            self.mean.set_value(new.mean.astype(self.mean.dtype))
            self.var.set_value(new.var.astype(self.var.dtype))
            if batches is not None:
                batches.set_value(new.count.astype(batches.dtype))
        return y.astype(dtype)


def _full_signature(cls):
    """Show the shared constructor arguments in ``inspect.signature(cls)`` (subclasses pass ``**kwargs``)."""
    base = inspect.signature(_BatchModule.__init__)
    own = inspect.signature(cls.__init__).parameters.values()
    extra = [p for p in own if p.name not in base.parameters and p.kind is inspect.Parameter.KEYWORD_ONLY]
    cls.__init__.__signature__ = base.replace(parameters=[*base.parameters.values(), *extra])
    return cls


@_full_signature
class BatchNorm(_BatchModule):
    """Batch normalization (Ioffe & Szegedy 2015), a drop-in for ``flax.nnx.BatchNorm``.

    ``y = (x − μ) / sqrt(σ² + ε) · scale + bias`` per channel (``axis``),
    with the batch's statistics in training and the running ones
    (``nnx.BatchStat`` ``mean``/``var``) otherwise, by
    :func:`jaxnorm.batch_norm`. Same arguments, defaults and variables as
    flax.nnx's; exact statistics (``use_fast_variance`` has no effect).
    ``model.train()`` / ``model.eval()`` (or ``nnx.view``) set
    ``use_running_average``; the call argument takes precedence. As in
    flax.nnx: ``mask`` broadcasts to ``x`` and its False entries are left
    out of the statistics and normalized like the others; complex inputs
    have a complex mean and the real variance ``E|x − μ|²`` (the float32
    running mean keeps its real part, as flax.nnx's does); one value per
    channel in training (each member inside ``nnx.vmap``/``nnx.scan``
    without ``axis_name``) warns and outputs ``bias``.

    Extra arguments: ``virtual_batch_size`` (Ghost BatchNorm) and
    ``convention``: ``"torch"`` makes ``momentum`` PyTorch's update weight
    (default 0.1 there), stores the unbiased running variance, and with
    ``momentum=None`` takes PyTorch's cumulative average, keeping the number
    of batches seen as the ``nnx.BatchStat`` ``count``.
    """

    def __init__(self, num_features: int, *, virtual_batch_size: int | None = None, convention: str = "flax",
                 **kwargs):
        super().__init__(num_features, **kwargs)
        self.virtual_batch_size = virtual_batch_size
        self.convention = convention
        if convention == "torch" and self.momentum is None:
            self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        """Normalize ``x``; in training update the running statistics.

        Args:
          x: the input, ``num_features`` channels along ``axis``.
          use_running_average: overrides the module's flag when given.
          mask: optional boolean array broadcastable to ``x``; False entries
            do not enter the statistics.

        Returns:
          The normalized input, same shape.
        """
        if self.convention == "torch" and self.momentum is None and getattr(self, "count", None) is None:
            raise ValueError(
                f"{type(self).__name__}: convention='torch' with momentum=None (PyTorch's cumulative "
                f"average) needs the number of batches seen, which the module creates when it is "
                f"constructed with momentum=None; construct it with "
                f"{type(self).__name__}(num_features, convention='torch', momentum=None, ...)"
            )
        mask = as_mask(mask)

        def core(x, scale, bias, stats, kwargs):
            return jn.batch_norm(
                x, scale, bias, stats, where=mask, virtual_batch_size=self.virtual_batch_size,
                convention=self.convention, masked_output="normalized", **kwargs,
            )

        return self._run(x, use_running_average, core)


@_full_signature
class BatchRenorm(_BatchModule):
    """Batch Renormalization (Ioffe 2017) by :func:`jaxnorm.batch_renorm`.

    ``r_max`` and ``d_max`` are constructor arguments, and may be overridden
    per call (e.g. with :func:`jaxnorm.batch_renorm_schedule` of the step).
    """

    def __init__(self, num_features: int, *, r_max: float = 3.0, d_max: float = 5.0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.r_max = r_max
        self.d_max = d_max

    def __call__(self, x, use_running_average: bool | None = None, *, r_max=None, d_max=None):
        r_max = self.r_max if r_max is None else r_max
        d_max = self.d_max if d_max is None else d_max

        def core(x, scale, bias, stats, kwargs):
            return jn.batch_renorm(x, scale, bias, stats, r_max=r_max, d_max=d_max, **kwargs)

        return self._run(x, use_running_average, core)


@_full_signature
class RepresentativeBatchNorm(_BatchModule):
    """Representative BatchNorm (Gao et al. 2021) by :func:`jaxnorm.representative_batch_norm`.

    Extra parameters ``center_weight`` (zeros), ``scale_weight`` (zeros) and
    ``scale_bias`` (ones), each ``(num_features,)``: the paper's initialization.
    ``batch_axis=None`` for per-example inputs inside ``vmap`` with ``axis_name``.
    """

    def __init__(self, num_features: int, *, batch_axis: int | None = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.batch_axis = batch_axis
        dt = self.param_dtype
        self.center_weight = nnx.Param(jnp.zeros((num_features,), dt))
        self.scale_weight = nnx.Param(jnp.zeros((num_features,), dt))
        self.scale_bias = nnx.Param(jnp.ones((num_features,), dt))

    def __call__(self, x, use_running_average: bool | None = None):
        w_m, w_v, b_v = value(self.center_weight), value(self.scale_weight), value(self.scale_bias)

        def core(x, scale, bias, stats, kwargs):
            return jn.representative_batch_norm(
                x, scale, bias, stats, center_weight=w_m, scale_weight=w_v, scale_bias=b_v,
                batch_axis=self.batch_axis, **kwargs,
            )

        return self._run(x, use_running_average, core, w_m, w_v, b_v)


@_full_signature
class EvoNormB0(_BatchModule):
    """EvoNorm-B0 (Liu et al. 2020) by :func:`jaxnorm.evonorm_b0`; extra parameter ``v`` (``v_init``, ones)."""

    def __init__(self, num_features: int, *, v_init: Any = _ONES, batch_axis: int | None = 0,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(num_features, rngs=rngs, **kwargs)
        self.batch_axis = batch_axis
        self.v = extra_param(v_init, (num_features,), self.param_dtype, rngs)

    def __call__(self, x, use_running_average: bool | None = None):
        v = value(self.v)

        def core(x, scale, bias, stats, kwargs):
            return jn.evonorm_b0(x, scale, bias, v, stats, batch_axis=self.batch_axis, **kwargs)

        return self._run(x, use_running_average, core, v)


@_full_signature
class SwitchableNorm(_BatchModule):
    """Switchable Normalization (Luo et al. 2019) by :func:`jaxnorm.switchable_norm`.

    Extra parameters ``mean_logits`` and ``var_logits`` (zeros, ``(3,)``:
    equal weights of IN, LN and BN statistics).
    """

    def __init__(self, num_features: int, *, batch_axis: int | None = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.batch_axis = batch_axis
        self.mean_logits = nnx.Param(jnp.zeros((3,), self.param_dtype))
        self.var_logits = nnx.Param(jnp.zeros((3,), self.param_dtype))

    def __call__(self, x, use_running_average: bool | None = None):
        mean_logits, var_logits = value(self.mean_logits), value(self.var_logits)

        def core(x, scale, bias, stats, kwargs):
            return jn.switchable_norm(
                x, scale, bias, stats, mean_logits=mean_logits, var_logits=var_logits,
                batch_axis=self.batch_axis, **kwargs,
            )

        return self._run(x, use_running_average, core)
