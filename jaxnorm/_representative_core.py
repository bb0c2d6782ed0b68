"""Representative BatchNorm as a per-example, per-channel affine map, with a closed-form derivative.

Representative BatchNorm (Gao et al. 2021) calibrates, normalizes with the
batch statistics, then calibrates again (``K`` the mean over one example's
spatial axes)::

    x' = x + w_m·K(x),   x̂ = (x' − μ_B)·r_B,   y = γ·σ(w_v·K(x̂) + b_v)·x̂ + β

Every statistic in it follows from the InstanceNorm moments of ``x`` (mean
``m`` and variance ``v`` of each example's channel): ``x'`` has IN mean
``(1 + w_m)·m`` and IN variance ``v``, its batch moments ``μ_B``, ``σ²_B``
are those IN moments pooled exactly over the batch (and the devices,
:func:`jaxnorm._stats.pool_sets`), ``r_B = (σ²_B + ε)^(−1/2)`` and
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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnorm._pooled import PooledSpec, frozen
from jaxnorm._lowering import lower_per_platform
from jaxnorm._reduction import inverse_std
from jaxnorm._remat import statistic
from jaxnorm._stats import Moments, moments, pool_sets, tangent_sums
from jaxnorm._xla_cpu import unview, view

__all__ = ["rbn_affine"]


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
