"""flax.linen modules for the BatchNorm family: running statistics in ``batch_stats``.

Uses: jaxnorm, jaxnorm._schemes.batch (running_stats), jaxnorm.linen
(_common).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

import jaxnorm as jn
from jaxnorm._schemes.batch.running_stats import DEFAULT_MOMENTUM
from jaxnorm.linen._common import (
    affine_params,
    as_mask,
    axes_tuple,
    merge_training,
    output_dtype,
    running_stats,
    single_axis,
)

__all__ = ["BatchNorm", "BatchRenorm", "EvoNormB0", "RepresentativeBatchNorm", "SwitchableNorm"]


class _BatchModule(nn.Module):
    """Fields and plumbing shared by the family: parameters, running statistics, training flag.

    Subclasses call :meth:`_run` from their ``__call__`` with a function
    ``core(x, scale, bias, stats, training, kwargs) -> (y, new_stats)`` that
    makes the one core call. The running statistics are written back only
    in training and never during ``init``; during ``init`` ``axis_name`` is
    ignored (as flax.linen does), so ``model.init`` runs outside the
    ``vmap``/``pmap``/``shard_map`` that binds it.
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = DEFAULT_MOMENTUM
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

    def _run(self, x, use_running_average, core, *extra_params, count: bool = False, features=None):
        """Declare the variables, make the core call, write the statistics back in training.

        ``count``: also keep the number of training batches seen, ``count``
        (int32 scalar, zero) in ``batch_stats``: PyTorch's cumulative average.
        ``features``: several feature axes (BatchNorm's ``axis`` tuple): the
        parameters and statistics have their shape, and ``x`` reaches the
        core with them moved last and merged into one channel axis (``core``
        receives ``x`` in that layout; :func:`merged_features`).
        """
        name = type(self).__name__
        training = not merge_training(self.use_running_average, use_running_average)
        x = jnp.asarray(x)
        if features is None:
            c = single_axis(name, "axis", self.axis, x.ndim, x.shape)
            feature_shape, restore = (x.shape[c],), None
        else:
            feature_shape = tuple(x.shape[a] for a in features)
            x, restore = merged_features(x, features)
            c = x.ndim - 1
        scale, bias = affine_params(self, feature_shape)
        # flax.linen keeps float32 statistics unless force_float32_reductions=False.
        stats_dtype = jnp.float32 if getattr(self, "force_float32_reductions", True) else self.param_dtype
        mean, var = running_stats(self, feature_shape, stats_dtype)
        batches = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32)) if count else None
        x, dtype = output_dtype(self.dtype, x, scale, bias, *extra_params)
        initializing = self.is_initializing()
        kwargs = {
            "training": training, "momentum": self.momentum, "epsilon": self.epsilon, "channel_axis": c,
            "axis_name": None if initializing else self.axis_name,
            "axis_index_groups": None if initializing else self.axis_index_groups,
        }
        mean_v, var_v = mean.value, var.value
        if training:
            # flax.linen's update momentum·old + (1 − momentum)·batch promotes the stored
            # statistics to the batch statistics' dtype (float64 inputs under x64, say).
            wide = jnp.finfo(x.dtype).dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.float32
            if getattr(self, "force_float32_reductions", True):
                wide = jnp.promote_types(wide, jnp.float32)
            mean_v, var_v = (t.astype(jnp.promote_types(t.dtype, wide)) for t in (mean_v, var_v))
        flat = (lambda t: t) if restore is None else (lambda t: None if t is None else jnp.reshape(t, (-1,)))
        stats = jn.BatchStats(flat(mean_v), flat(var_v), None if batches is None else batches.value)
        y, new = core(x, flat(scale), flat(bias), stats, kwargs)
        if training and not initializing:
            mean.value, var.value = (jnp.reshape(t, feature_shape) for t in (new.mean, new.var))
            if batches is not None:
                batches.value = new.count
        y = y if restore is None else restore(y)
        return y.astype(dtype)


def merged_features(x, features):
    """``x`` with the ``features`` axes moved last and merged into one, and the way back (layout only).

    Returns ``(x_merged, restore)``; ``restore`` undoes it for an array of
    ``x_merged``'s shape.
    """
    others = tuple(a for a in range(x.ndim) if a not in features)
    perm = others + tuple(features)
    moved_shape = tuple(x.shape[a] for a in perm)
    inverse = tuple(perm.index(a) for a in range(x.ndim))
    merged = jnp.transpose(x, perm).reshape(moved_shape[: len(others)] + (-1,))
    return merged, lambda y: jnp.transpose(jnp.reshape(y, moved_shape), inverse)


class BatchNorm(_BatchModule):
    """Batch normalization (Ioffe & Szegedy 2015), a drop-in for ``flax.linen.BatchNorm``.

    ``y = (x − μ) / sqrt(σ² + ε) · scale + bias`` per channel (``axis``),
    with the batch's statistics in training and the running ones
    (``batch_stats`` ``mean``/``var``) otherwise, by :func:`jaxnorm.batch_norm`.
    Same fields, defaults and variables as flax.linen's; exact statistics
    (``use_fast_variance`` has no effect; ``force_float32_reductions=False``
    keeps the running statistics in ``param_dtype``, as flax does, while
    they are still computed in at least float32). As in flax.linen:
    ``axis_name`` is ignored during ``init``; ``mask`` is any boolean (or
    0/1) array that broadcasts to ``x``, its False entries are left out of
    the statistics and normalized like the others; complex inputs have a
    complex mean and the real variance ``E|x − μ|²``; one value per channel
    in training warns and outputs ``bias``.

    ``axis`` may name several feature axes, as in flax.linen: the
    parameters and running statistics then have their shape.

    Extra fields: ``virtual_batch_size`` (Ghost BatchNorm) and
    ``convention``: ``"torch"`` makes ``momentum`` PyTorch's update weight
    (default 0.1 there), stores the unbiased running variance, and with
    ``momentum=None`` takes PyTorch's cumulative average, keeping the number
    of batches seen in ``batch_stats`` as ``count``.
    """

    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    virtual_batch_size: int | None = None
    convention: str = "flax"

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        """Normalize ``x``; in training (and not during ``init``) update ``batch_stats``.

        Args:
          x: the input, channels along ``axis``.
          use_running_average: use the running statistics (inference);
            exactly one of this and the field must be set.
          mask: optional boolean array broadcastable to ``x``; False entries
            do not enter the statistics.

        Returns:
          The normalized input, same shape.
        """
        mask = as_mask(mask)
        features = None
        if isinstance(self.axis, (tuple, list)) and len(self.axis) > 1:
            x = jnp.asarray(x)
            features = axes_tuple(type(self).__name__, "axis", self.axis, x.ndim, x.shape)
            if len(features) > 1 and mask is not None:
                mask = merged_features(jnp.broadcast_to(mask, x.shape), features)[0]
            features = features if len(features) > 1 else None

        def core(x, scale, bias, stats, kwargs):
            return jn.batch_norm(
                x, scale, bias, stats, where=mask, virtual_batch_size=self.virtual_batch_size,
                convention=self.convention, masked_output="normalized", **kwargs,
            )

        count = self.convention == "torch" and self.momentum is None
        return self._run(x, use_running_average, core, count=count, features=features)


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
