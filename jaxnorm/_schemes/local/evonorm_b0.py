"""EvoNorm-B0 (Liu et al. 2020): division by the larger of a batch and a per-example deviation.

It divides by the larger of a batch and a per-example term::

    y = x / max(L, R) · γ + β,   L = sqrt(σ²_B + ε),   R = v·x + sqrt(σ²_I + ε)

with ``σ²_I`` the variance of each InstanceNorm set (one example's channel
over its spatial axes) and ``σ²_B`` the BatchNorm variance (every IN set of
a channel, across devices too), pooled exactly from the IN moments
(:func:`jaxnorm._core.moments.pool_sets`) in training, the running variance in
inference.

Derivative. With ``A = Σ_I ẋ`` and ``B = Σ_I (x − s)·ẋ`` per IN set (``s``
its shift, ``d = μ − s``), ``σ̇²/2 = P(B − d·A)/n`` for either source (``P``
pooling IN sets into the source's sets, ``n`` their size), and, with ``w``
the weight JAX's ``max`` gives each side (1, 0, or 1/2 on ties)::

    L̇ = (σ̇²_B/2)/L,   Ṙ = v̇·x + v·ẋ + (σ̇²_I/2)/sqrt(σ²_I + ε)
    ẏ = γ·(ẋ − (x/D)·(w_L·L̇ + w_R·Ṙ))/D + γ̇·x/D + β̇,   D = max(L, R)

It is a ``jax.custom_jvp`` made of JAX operations, linear in the tangents:
JAX transposes it for reverse mode (per-IN-set sums of the cotangent, then
one pass for ``dx``), and forward mode and higher orders keep working.
In the CPU program each term whose transpose is a reduction is formed in
its own view (:func:`jaxnorm._lowering.xla_cpu.view`) and ``w`` comes from ``sign(L − R)``, which XLA:CPU
fuses into a reduction (a ``select`` it would store), so every reduction
recomputes ``1/D`` and ``w`` from ``x``.

Uses: jaxnorm._core (moments, remat, validate), jaxnorm._lowering
(per_platform, xla_cpu), jaxnorm._schemes.batch (batch_norm, batch_setup,
pooled_sets, running_stats).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Moments, compute_dtype, moments, pool_sets, tangent_sums
from jaxnorm._core.remat import keep_statistics, statistic
from jaxnorm._lowering.per_platform import lower_per_platform
from jaxnorm._lowering.xla_cpu import unview, view
from jaxnorm._schemes.batch.batch_norm import fold_batch
from jaxnorm._schemes.batch.batch_setup import example_axes, setup
from jaxnorm._schemes.batch.pooled_sets import PooledSpec, frozen, pooled_spec
from jaxnorm._schemes.batch.running_stats import DEFAULT_MOMENTUM, resolve_momentum

__all__ = ["b0_divide", "evonorm_b0"]


def evonorm_b0(
    x,
    scale,
    bias,
    v,
    stats,
    *,
    training: bool,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    batch_axis: int | None = 0,
    convention: str = "flax",
):
    """EvoNorm-B0 (Liu, Brock, Simonyan & Le, NeurIPS 2020), batch-dependent.

    The larger of the batch standard deviation and a per-example term
    divides the input::

        y = x / max(sqrt(σ²_batch + ε), v · x + sqrt(σ²_instance(x) + ε)) · scale + bias

    ``σ²_batch`` is BatchNorm's per-channel variance (every axis but
    ``channel_axis``, across ``axis_name``) in training and the running
    variance in inference; ``σ²_instance`` is each example's per-channel
    variance over its spatial axes. Running statistics are updated as in
    :func:`jaxnorm.batch_norm` (only the variance is used). The paper's
    initial values are ``v = scale = 1``, ``bias = 0``.

    Args:
      x, scale, bias, stats, training, momentum, epsilon, channel_axis,
        axis_name, axis_index_groups, convention: as in
        :func:`jaxnorm.batch_norm`.
      v: ``(C,)`` learned slope of the per-example term; None means 1.
      batch_axis: the batch axis (default 0), excluded from the instance
        variance; None when ``x`` is a single example (inside ``vmap``).
        Per-example ``scale``/``bias`` ``(N, C)`` always index axis 0.

    Returns:
      ``(y, new_stats)`` as :func:`jaxnorm.batch_norm`.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.batch_norm`, and ``v`` not
        of shape ``(C,)``, ``batch_axis`` out of range or the channel axis.
    """
    fn = "evonorm_b0"
    weights = resolve_momentum(fn, momentum, convention)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups, where=None,
    )
    slope, _ = check.check_param(fn, "v", v, {"per channel": (s.channels,)}, s.shape)
    slope = 1 if slope is None else s.channel_shaped(slope)
    spec = pooled_spec(s, example_axes(fn, s, batch_axis, channel_axis), training)

    def b0(x, scale, bias, slope):
        xc = x.astype(compute_dtype(x.dtype))
        run_var = s.channel_shaped(s.stats.var.astype(xc.dtype))
        y, batch = b0_divide(spec, xc, scale, bias, jnp.asarray(slope, xc.dtype), run_var)
        new = fold_batch(s, Moments(*batch), weights=weights, convention=convention, fn=fn) if training else s.stats
        return y.astype(x.dtype), new

    # Reverse mode keeps x and the variances; the max's branches are recomputed.
    return keep_statistics(b0)(s.x, s.scale, s.bias, slope)


def _statistics(spec: PooledSpec, x, run_var):
    """IN moments, the batch moments pooled from them (training), ``L`` and ``sqrt(σ²_I + ε)``."""
    inst = moments(x, spec.instance())
    batch = None
    if spec.training:
        batch = pool_sets(inst, spec.batch())
        left = jnp.sqrt(batch.var + spec.epsilon)
    else:
        left = jnp.sqrt(run_var + spec.epsilon)
    root = statistic(jnp.sqrt(inst.var + spec.epsilon))
    return inst, batch, statistic(left), root



@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def b0_divide(spec: PooledSpec, x, scale, bias, slope, run_var):
    """``x / max(L, R) · scale + bias`` and the batch moments (training; ``()`` in inference).

    Args:
      spec: static settings.
      x: input in the compute dtype.
      scale, bias: None or arrays broadcastable to ``x``.
      slope: ``v``, an array broadcastable to ``x`` (per channel).
      run_var: the running variance shaped to broadcast against ``x``.

    Returns:
      ``(y, batch)``: the output, and the BN source's moments (no
      derivative) or ``()``.
    """
    inst, batch, left, root = _statistics(spec, x, run_var)
    y = x / jnp.maximum(left, slope * x + root)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, frozen(batch)


@b0_divide.defjvp
def _b0_divide_jvp(spec, primals, tangents):
    x, scale, bias, slope, run_var = primals
    x_dot, scale_dot, bias_dot, slope_dot, run_var_dot = tangents
    inst, batch, left, root = _statistics(spec, x, run_var)
    y = x / jnp.maximum(left, slope * x + root)
    y = y if scale is None else y * scale
    y = y if bias is None else y + bias
    batch_out = frozen(batch)

    # Per-IN-set sums of the tangent (their transposes join the dx pass).
    a_sum, b_sum = tangent_sums(x, x_dot, inst.shift, spec.instance())
    safe = jnp.maximum(inst.count, 1)
    half_in = (b_sum - inst.mean_shifted * a_sum) / safe
    if spec.training:
        d_batch = (batch.shift - inst.shift) + batch.mean_shifted
        half_batch = spec.batch().sum(b_sum - d_batch * a_sum) / jnp.maximum(batch.count, 1)
    else:
        half_batch = run_var_dot / 2

    t = lower_per_platform(
        x, left, root, slope, scale, half_batch, half_in, x_dot, slope_dot, scale_dot, bias_dot,
        cpu=_tangent, accelerator=_tangent,
    )
    return (y, batch_out), (t, tuple(jnp.zeros_like(b) for b in batch_out))


def _sides(x, left, root, slope, k):
    """``(x, 1/D, w_L, w_R)`` in view ``k``."""
    xk = view(x, k, x)
    left_k, right_k = view(left, k, x), view(slope, k, x) * xk + view(root, k, x)
    # 1, 1/2 or 0 as sign(L − R) is 1, 0 or −1: XLA:CPU fuses sign into
    # its reductions, where it would store a select.
    w_left = 0.5 * (1 + jnp.sign(left_k - right_k))
    return xk, 1 / jnp.maximum(left_k, right_k), w_left, 1 - w_left


def _tangent(x, left, root, slope, scale, half_batch, half_in, x_dot, slope_dot, scale_dot, bias_dot):
    """``ẏ``, linear in ``(half_batch, half_in, x_dot, slope_dot, scale_dot, bias_dot)``.

    ``half_*`` are the sources' ``σ̇²/2``. In the CPU program each term whose
    transpose is a reduction is in a view of its own, so that each reduction
    recomputes ``1/D`` and the side weights from ``x`` (shared, XLA:CPU would
    store them).
    """
    gamma = 1 if scale is None else scale
    # dx side (view 1): γ/D·ẋ − γ·x·w_R·v/D²·ẋ
    g1 = view(x_dot, 1, x)
    x1, inv1, _, w_right1 = _sides(x, left, root, slope, 1)
    gamma1, slope1 = view(gamma, 1, x), view(slope, 1, x)
    t = unview((gamma1 * inv1 - gamma1 * x1 * w_right1 * slope1 * inv1 * inv1) * g1, x.shape)

    def term(k, side, coefficient, times_x=False):
        """``−γ·x·w/D²·coefficient`` (times ``x`` again if asked) in view ``k``, ``w`` the side's weight."""
        xk, inv, w_left, w_right = _sides(x, left, root, slope, k)
        w = w_left if side == "left" else w_right * xk if times_x else w_right
        return unview(-view(gamma, k, x) * xk * inv * inv * w * view(coefficient, k, x), x.shape)

    t = t + term(0, "left", half_batch / left) + term(2, "right", half_in / root)
    t = t + term(3, "right", slope_dot, times_x=True)
    if scale is not None:
        x4, inv4, _, _ = _sides(x, left, root, slope, 4)
        t = t + unview(view(scale_dot, 4, x) * x4 * inv4, x.shape)
    if bias_dot is not None:
        t = t + bias_dot
    return t
