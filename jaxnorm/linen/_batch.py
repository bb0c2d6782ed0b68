"""flax.linen modules for the BatchNorm family: running statistics in ``batch_stats``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

import jaxnorm as jn
from jaxnorm.linen._common import affine_params, merge_training, output_dtype, running_stats, single_axis

__all__ = ["BatchNorm", "BatchRenorm", "EvoNormB0", "RepresentativeBatchNorm", "SwitchableNorm"]


class _BatchModule(nn.Module):
    """Fields and plumbing shared by the family: parameters, running statistics, training flag.

    Subclasses call :meth:`_run` from their ``__call__`` with a function
    ``core(x, scale, bias, stats, training, kwargs) -> (y, new_stats)`` that
    makes the one core call. The running statistics are written back only
    in training and never during ``init``.
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    axis_name: Any = None
    axis_index_groups: Any = None

    def _channels(self, x) -> int:
        c = single_axis(type(self).__name__, "axis", self.axis, jnp.ndim(x), jnp.shape(x))
        return jnp.shape(x)[c]

    def _run(self, x, use_running_average, core, *extra_params):
        name = type(self).__name__
        training = not merge_training(self.use_running_average, use_running_average)
        x = jnp.asarray(x)
        c = single_axis(name, "axis", self.axis, x.ndim, x.shape)
        scale, bias = affine_params(self, (x.shape[c],))
        mean, var = running_stats(self, x.shape[c])
        x, dtype = output_dtype(self.dtype, x, scale, bias, *extra_params)
        kwargs = {
            "training": training, "momentum": self.momentum, "epsilon": self.epsilon,
            "channel_axis": c, "axis_name": self.axis_name, "axis_index_groups": self.axis_index_groups,
        }
        y, new = core(x, scale, bias, jn.BatchStats(mean.value, var.value), kwargs)
        if training and not self.is_initializing():
            mean.value, var.value = new.mean, new.var
        return y.astype(dtype)


class BatchNorm(_BatchModule):
    """Batch normalization, a drop-in for ``flax.linen.BatchNorm`` (same fields, defaults, variables).

    Calls :func:`jaxnorm.batch_norm`: exact statistics (flax's
    ``use_fast_variance`` and ``force_float32_reductions`` are accepted and
    have no effect), Flax's momentum convention, ``mask`` for padding. Extra
    fields: ``virtual_batch_size`` (Ghost BatchNorm) and ``convention``
    (``"torch"``: momentum is the update weight, unbiased running variance).
    """

    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    virtual_batch_size: int | None = None
    convention: str = "flax"

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        def core(x, scale, bias, stats, kwargs):
            return jn.batch_norm(
                x, scale, bias, stats, where=mask, virtual_batch_size=self.virtual_batch_size,
                convention=self.convention, **kwargs,
            )

        return self._run(x, use_running_average, core)


class BatchRenorm(_BatchModule):
    """Batch Renormalization (Ioffe 2017) by :func:`jaxnorm.batch_renorm`.

    ``r_max`` and ``d_max`` are fields, and may be overridden per call
    (e.g. with :func:`jaxnorm.batch_renorm_schedule` of the step).
    """

    r_max: float = 3.0
    d_max: float = 5.0

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, r_max=None, d_max=None):
        r_max = self.r_max if r_max is None else r_max
        d_max = self.d_max if d_max is None else d_max

        def core(x, scale, bias, stats, kwargs):
            return jn.batch_renorm(x, scale, bias, stats, r_max=r_max, d_max=d_max, **kwargs)

        return self._run(x, use_running_average, core)


class RepresentativeBatchNorm(_BatchModule):
    """Representative BatchNorm (Gao et al. 2021) by :func:`jaxnorm.representative_batch_norm`.

    Extra parameters ``center_weight`` (zeros), ``scale_weight`` (zeros) and
    ``scale_bias`` (ones), each ``(C,)``: the paper's initialization.
    ``batch_axis=None`` for per-example inputs inside ``nn.vmap`` with
    ``axis_name``.
    """

    batch_axis: int | None = 0

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        c = self._channels(x)
        w_m = self.param("center_weight", initializers.zeros, (c,), self.param_dtype)
        w_v = self.param("scale_weight", initializers.zeros, (c,), self.param_dtype)
        b_v = self.param("scale_bias", initializers.ones, (c,), self.param_dtype)

        def core(x, scale, bias, stats, kwargs):
            return jn.representative_batch_norm(
                x, scale, bias, stats, center_weight=w_m, scale_weight=w_v, scale_bias=b_v,
                batch_axis=self.batch_axis, **kwargs,
            )

        return self._run(x, use_running_average, core, w_m, w_v, b_v)


class EvoNormB0(_BatchModule):
    """EvoNorm-B0 (Liu et al. 2020) by :func:`jaxnorm.evonorm_b0`; extra parameter ``v`` (ones).

    ``batch_axis=None`` for per-example inputs inside ``nn.vmap`` with ``axis_name``.
    """

    batch_axis: int | None = 0

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        v = self.param("v", initializers.ones, (self._channels(x),), self.param_dtype)

        def core(x, scale, bias, stats, kwargs):
            return jn.evonorm_b0(x, scale, bias, v, stats, batch_axis=self.batch_axis, **kwargs)

        return self._run(x, use_running_average, core, v)


class SwitchableNorm(_BatchModule):
    """Switchable Normalization (Luo et al. 2019) by :func:`jaxnorm.switchable_norm`.

    Extra parameters ``mean_logits`` and ``var_logits`` (zeros, ``(3,)``:
    equal weights of IN, LN and BN statistics). ``batch_axis=None`` for
    per-example inputs inside ``nn.vmap`` with ``axis_name``.
    """

    batch_axis: int | None = 0

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        mean_logits = self.param("mean_logits", initializers.zeros, (3,), self.param_dtype)
        var_logits = self.param("var_logits", initializers.zeros, (3,), self.param_dtype)

        def core(x, scale, bias, stats, kwargs):
            return jn.switchable_norm(
                x, scale, bias, stats, mean_logits=mean_logits, var_logits=var_logits,
                batch_axis=self.batch_axis, **kwargs,
            )

        return self._run(x, use_running_average, core)
