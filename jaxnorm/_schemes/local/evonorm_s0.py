"""EvoNorm-S0 (Liu et al. 2020): a sigmoid gate over the group standard deviation, batch-independent.

It is ``y = z · γ + β`` with::

    z = x · σ(v·x) · r,   r = (var_G(x) + ε)^(−1/2)

``σ`` the logistic sigmoid and ``var_G`` the biased variance of each
GroupNorm set (one example's spatial axes and a group of channels).
Differentiated op by op, XLA:CPU stores ``σ(v·x)``, ``x·σ(v·x)`` and the
statistics' broadcasts between kernels. The derivative is short::

    ż = r·(σ + v·x·σ·(1 − σ))·ẋ + r·x²·σ·(1 − σ)·v̇ + x·σ·ṙ
    ṙ = −r³ · (B − d·A)/n,   A = Σ_G ẋ,   B = Σ_G (x − s)·ẋ

with ``s`` each set's shift and ``d = μ − s`` (so ``B − d·A = Σ_G (x − μ)·ẋ``,
exact at large means). It is a ``jax.custom_jvp`` made of JAX operations
and linear in the tangents: JAX transposes it for reverse mode (the per-set
sums of the cotangent times ``x·σ``, the per-channel sum for ``v̄``, then one
pass for ``dx``), and forward mode and higher orders keep working. The
``ẋ`` side is computed in its own view in the CPU program
(:func:`jaxnorm._lowering.xla_cpu.view`) so that each kernel recomputes ``σ(v·x)``
from ``x`` instead of XLA:CPU storing it.

Uses: jaxnorm._core (moments, params, reduction, remat, validate),
jaxnorm._lowering (per_platform, xla_cpu), jaxnorm._schemes.per_example
(channel_setup).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction, compute_dtype, moments, tangent_sums
from jaxnorm._core.params import apply_affine
from jaxnorm._core.reduction import inverse_std
from jaxnorm._core.remat import keep_statistics, statistic
from jaxnorm._lowering.per_platform import lower_per_platform
from jaxnorm._lowering.xla_cpu import unview, view
from jaxnorm._schemes.per_example.channel_setup import channel_setup

__all__ = ["evonorm_s0", "s0_gate"]


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def s0_gate(reduction: Reduction, epsilon: float, x: jax.Array, slope: jax.Array) -> jax.Array:
    """``x · σ(v·x) / sqrt(var_G(x) + ε)`` for the sets of ``reduction``.

    Args:
      reduction: the GroupNorm sets (hashable).
      epsilon: added to the biased variance.
      x: input in the compute dtype.
      slope: ``v``, an array broadcastable to ``x`` (per channel or per
        example and channel).

    Returns:
      ``z`` with ``x``'s shape.
    """
    r = inverse_std(moments(x, reduction).var, epsilon)
    return x * jax.nn.sigmoid(slope * x) * r


@s0_gate.defjvp
def _s0_gate_jvp(reduction, epsilon, primals, tangents):
    x, slope = primals
    x_dot, slope_dot = tangents
    mo = moments(x, reduction)
    r = statistic(inverse_std(mo.var, epsilon))
    z = lower_per_platform(x, slope, r, cpu=_output, accelerator=_output)
    a_sum, b_sum = tangent_sums(x, x_dot, mo.shift, reduction)
    r_dot = -(r * r * r) * (b_sum - mo.mean_shifted * a_sum) / jnp.maximum(mo.count, 1)
    t = lower_per_platform(x, slope, r, r_dot, x_dot, slope_dot, cpu=_tangent, accelerator=_tangent)
    return z, t


def _gated(x, slope, k):
    """``(x, σ(v·x))`` in view ``k``: each use recomputes the sigmoid (XLA:CPU would store a shared one)."""
    xk = view(x, k, x)
    return xk, jax.nn.sigmoid(view(slope, k, x) * xk)


def _output(x, slope, r):
    """``z = x·σ(v·x)·r``, in view 2 in the CPU program."""
    x2, gate2 = _gated(x, slope, 2)
    return unview(x2 * gate2 * view(r, 2, x), x.shape)


def _tangent(x, slope, r, r_dot, x_dot, slope_dot):
    """``ż``, linear in ``(r_dot, x_dot, slope_dot)``.

    In the CPU program ẋ's side is in view 1 (its transpose is the dx pass),
    the statistics' term in view 0 (the per-set sums), the slope's in view 3.
    """
    g1 = view(x_dot, 1, x)
    x1, gate1 = _gated(x, slope, 1)
    slope1 = view(slope, 1, x)
    t = unview(view(r, 1, x) * (gate1 + slope1 * x1 * gate1 * (1 - gate1)) * g1, x.shape)
    t = t + x * jax.nn.sigmoid(slope * x) * r_dot
    x3, gate3 = _gated(x, slope, 3)
    return t + unview(view(r, 3, x) * x3 * x3 * gate3 * (1 - gate3) * view(slope_dot, 3, x), x.shape)
