"""Representative BatchNorm (Gao et al. 2021): BatchNorm with feature calibration, as one affine map.

It calibrates, normalizes with the batch statistics, then calibrates again
(``K`` the mean over one example's spatial axes)::

    x' = x + w_m·K(x),   x̂ = (x' − μ_B)·r_B,   y = γ·σ(w_v·K(x̂) + b_v)·x̂ + β

Every statistic in it follows from the InstanceNorm moments of ``x`` (mean
``m`` and variance ``v`` of each example's channel): ``x'`` has IN mean
``(1 + w_m)·m`` and IN variance ``v``, its batch moments ``μ_B``, ``σ²_B``
are those IN moments pooled exactly over the batch (and the devices,
:func:`jaxnorm._core.moments.pool_sets`), ``r_B = (σ²_B + ε)^(−1/2)`` and
``K(x̂) = ((1 + w_m)·m − μ_B)·r_B``. So ``y = A·x + B`` with per-(example,
channel) coefficients::

    A = r_B·γ·σ(w_v·K(x̂) + b_v),   B = (w_m·m − μ_B)·A + β

Derivative: with the per-set sums ``Σ ẋ`` and ``Σ (x − s)·ẋ`` (``s`` the IN
shift) the IN moments' tangents are ``ṁ = Σẋ/n`` and
``v̇ = 2·(Σ(x − s)ẋ − (m − s)·Σẋ)/n``; ``Ȧ``, ``Ḃ`` are the JVP of the small
coefficient map, and ``ẏ = A·ẋ + Ȧ·x + Ḃ``. It is a ``jax.custom_jvp`` of
JAX operations, linear in the tangents: JAX transposes it into the
per-set sums of ``g`` and ``g·x`` and one pass for ``dx`` (reverse mode),
and forward mode and higher orders keep working. ``A·x + B`` is formed as
``A·(x − o) + B`` with ``o`` one sample per channel (the caller's offset),
and ``m``, ``μ_B`` relative to ``o``, so every term is of the order of the
spread and nothing cancels at large means.

Uses: jaxnorm._core (collectives, moments, reduction, remat, validate),
jaxnorm._lowering (per_platform, xla_cpu), jaxnorm._schemes.batch (batch_norm,
batch_setup, pooled_sets, running_stats).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import validate as check
from jaxnorm._core.collectives import all_gather
from jaxnorm._core.moments import Moments, compute_dtype, moments, pool_sets, tangent_sums
from jaxnorm._core.reduction import inverse_std
from jaxnorm._core.remat import keep_statistics, statistic
from jaxnorm._lowering.per_platform import lower_per_platform
from jaxnorm._lowering.xla_cpu import unview, view
from jaxnorm._schemes.batch.batch_norm import fold_batch
from jaxnorm._schemes.batch.batch_setup import example_axes, setup
from jaxnorm._schemes.batch.pooled_sets import PooledSpec, frozen, pooled_spec
from jaxnorm._schemes.batch.running_stats import DEFAULT_MOMENTUM, resolve_momentum

__all__ = ["RBNCalibration", "rbn_affine", "representative_batch_norm"]


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
        check.check_positive_int("RBNCalibration.init", "num_features", num_features, example=64)
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
        s.channel_shaped(check.check_param(fn, name, p, allowed, s.shape)[0])
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


def _coefficients(spec: PooledSpec, count, inst, params):
    """``(A, B)`` and the batch moments of ``x'`` from the IN moments ``inst = (shift, mean_shifted, var)``."""
    shift, mean_shifted, var = inst
    scale, bias, w_m, w_v, b_v, run_mean, run_var = params
    m = shift + mean_shifted
    if spec.training:
        calibrated = Moments((1 + w_m) * shift, (1 + w_m) * mean_shifted, var, count)
        batch = pool_sets(calibrated, spec.batch())
        mu_b, var_b = batch.shift + batch.mean_shifted, batch.var
    else:
        batch, mu_b, var_b = None, run_mean, run_var
    r_b = inverse_std(var_b, spec.epsilon)
    factor = jax.nn.sigmoid(w_v * (((1 + w_m) * m - mu_b) * r_b) + b_v)
    a = r_b * factor if scale is None else r_b * factor * scale
    b = (w_m * m - mu_b) * a
    if bias is not None:
        b = b + bias
    return a, b, batch



def _relative_moments(x, offset, spec: PooledSpec):
    """The IN moments of ``x − offset`` as ``(shift, mean_shifted, var)``, and those of ``x``."""
    inst = moments(x, spec.instance())
    return (inst.shift - offset, inst.mean_shifted, inst.var), inst


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def rbn_affine(spec: PooledSpec, x, offset, scale, bias, w_m, w_v, b_v, run_mean, run_var):
    """Representative BatchNorm of ``x`` and the batch moments of ``x' − (1 + w_m)·offset`` (training).

    Args:
      spec: static settings.
      x: input in the compute dtype.
      offset: one sample per channel (keepdims shape; no derivative), or 0.
      scale, bias: None or arrays broadcastable to ``x`` (per channel or per
        example and channel).
      w_m, w_v, b_v: the calibration weights, shaped to broadcast per channel.
      run_mean, run_var: the running statistics, the mean less
        ``(1 + w_m)·offset``, shaped per channel (inference), or None
        (training).

    Returns:
      ``(y, batch)``: the output and, in training, the moments of each
      BatchNorm set of ``x' − (1 + w_m)·offset`` (no derivative) or ``()``.
    """
    rel, inst = _relative_moments(x, offset, spec)
    a, b, batch = _coefficients(spec, inst.count, rel, (scale, bias, w_m, w_v, b_v, run_mean, run_var))
    return (x - offset) * a + b, frozen(batch)


@rbn_affine.defjvp
def _rbn_affine_jvp(spec, primals, tangents):
    x, offset, *params = primals
    x_dot, _, *param_dots = tangents
    rel, inst = _relative_moments(x, offset, spec)
    n = jnp.maximum(inst.count, 1)
    a_sum, b_sum = tangent_sums(x, x_dot, inst.shift, spec.instance())
    rel_dot = (jnp.zeros_like(rel[0]), a_sum / n, 2 * (b_sum - inst.mean_shifted * a_sum) / n)
    coefficients = functools.partial(_coefficients, spec, inst.count)
    (a, b, batch), (a_dot, b_dot, _) = jax.jvp(coefficients, (rel, tuple(params)), (rel_dot, tuple(param_dots)))
    a, b = statistic(a), statistic(b)
    y = (x - offset) * a + b
    t = lower_per_platform(x, offset, a, x_dot, a_dot, b_dot, cpu=_tangent, accelerator=_tangent)
    batch_out = frozen(batch)
    return (y, batch_out), (t, tuple(jnp.zeros_like(t_) for t_ in batch_out))


def _tangent(x, offset, a, x_dot, a_dot, b_dot):
    """``ẏ = A·ẋ + Ȧ·(x − o) + Ḃ``; in the CPU program ``A·ẋ`` in view 1 (its transpose is the dx pass)."""
    return unview(view(a, 1, x) * view(x_dot, 1, x), x.shape) + (x - offset) * a_dot + b_dot
