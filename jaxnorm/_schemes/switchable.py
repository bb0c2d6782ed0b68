"""Switchable Normalization (Luo et al. 2019): a learned mixture of IN, LN and BN statistics.

It mixes three sources ``k``::

    μ = Σ_k w_k μ_k,   σ² = Σ_k v_k σ²_k,   y = (x − μ)·r·γ + β,   r = (σ² + ε)^(−1/2)

over the InstanceNorm sets (per example and channel), the LayerNorm sets
(per example) and the BatchNorm sets (per channel). Every LN and BN set is
a union of IN sets, so one pass of IN moments gives all three
(:func:`jaxnorm._core.moments.pool_sets`), and ``x − μ`` is formed as
``(x − s) − D`` with ``s`` the IN shift and ``D = Σ_k w_k (μ_k − s)``,
exact at large means.

Derivative. With ``A = Σ_IN ẋ`` and ``B = Σ_IN (x − s)·ẋ`` (per IN set),
``P_k`` the sum of IN-set values over a set of source ``k`` and ``n_k``
its entry count, ``d_k = μ_k − s``::

    μ̇_k = P_k(A)/n_k,   σ̇²_k = 2·P_k(B − d_k·A)/n_k
    ẏ = γ·r·(ẋ − μ̇) − γ·(x − μ)·r³·σ̇²/2 + γ̇·(x − μ)·r + β̇

with ``μ̇ = Σ_k (w_k μ̇_k + ẇ_k μ_k)`` and ``σ̇² = Σ_k (v_k σ̇²_k + v̇_k σ²_k)``.
In inference the BN source is the running statistics (constants to ``x``).
The rule is linear in the tangents and made of JAX operations: JAX
transposes it for reverse mode, two per-IN-set sums of the cotangent and
one pass for ``dx``, and forward mode and higher orders keep working.

Uses: jaxnorm._core (moments, reduction, remat, validate), jaxnorm._lowering
(per_platform, xla_cpu), jaxnorm._schemes.batch (batch_norm, batch_setup,
pooled_sets, running_stats).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Moments, Reduction, compute_dtype, moments, pool_sets, tangent_sums
from jaxnorm._core.reduction import inverse_std
from jaxnorm._core.remat import keep_statistics, statistic
from jaxnorm._lowering.per_platform import lower_per_platform
from jaxnorm._lowering.xla_cpu import unview, view
from jaxnorm._schemes.batch.batch_norm import fold_batch
from jaxnorm._schemes.batch.batch_setup import example_axes, setup
from jaxnorm._schemes.batch.pooled_sets import PooledSpec, frozen, pooled_spec
from jaxnorm._schemes.batch.running_stats import DEFAULT_MOMENTUM, resolve_momentum

__all__ = ["MixSpec", "switch_normalize", "switchable_norm"]


_SOURCES = ("instance", "layer", "batch")


def _mixture(fn, name, logits, shape):
    """softmax of ``(3,)`` logits (None: equal weights), in at least float32 (16-bit logits are promoted)."""
    if logits is None:
        return jnp.full((3,), 1 / 3)
    logits, _ = check.check_param(
        fn, name, logits, {"one logit per source (instance, layer, batch)": (3,)}, shape
    )
    return jax.nn.softmax(logits.astype(compute_dtype(logits.dtype)))


def switchable_norm(
    x,
    scale,
    bias,
    stats,
    *,
    mean_logits=None,
    var_logits=None,
    training: bool,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    batch_axis: int | None = 0,
    convention: str = "flax",
):
    """Switchable Normalization (Luo, Ren, Peng, Zhang & Li, ICLR 2019).

    The mean and the variance are each a softmax-weighted mixture of the
    statistics of InstanceNorm (per example and channel, over the spatial
    axes), LayerNorm (per example, over the spatial axes and channels) and
    BatchNorm (per channel, over everything else and across ``axis_name``)::

        μ = Σ_k softmax(λ_μ)_k μ_k,   σ² = Σ_k softmax(λ_σ)_k σ²_k,   k ∈ (IN, LN, BN)
        y = (x − μ) / sqrt(σ² + ε) · scale + bias

    All variances are biased (the paper's equations; its reference code
    takes the unbiased IN variance). BatchNorm's statistics come from the
    batch in training, which also updates the running statistics as
    :func:`jaxnorm.batch_norm` does, and from ``stats`` in inference.
    One pass of InstanceNorm moments gives all three sources (LN and BN
    sets are unions of IN sets, merged exactly), and ``x − μ`` is formed as
    ``(x − s) − Σ_k w_k (μ_k − s)`` with ``s`` the IN shift, so it stays
    exact at large means; the derivative is in closed form
    (:mod:`jaxnorm._schemes.switchable`). Equal logits (the default, and the
    paper's initialization) weigh the three equally.

    Args:
      x, scale, bias, stats, training, momentum, epsilon, channel_axis,
        axis_name, axis_index_groups, convention: as in
        :func:`jaxnorm.batch_norm`.
      mean_logits: ``(3,)`` logits λ_μ over (instance, layer, batch), or
        None for equal weights.
      var_logits: ``(3,)`` logits λ_σ, likewise.
      batch_axis: the batch axis (default 0), excluded from the IN and LN
        statistics; None when ``x`` is a single example (inside ``vmap``).
        Per-example ``scale``/``bias`` ``(N, C)`` always index axis 0.

    Returns:
      ``(y, new_stats)`` as :func:`jaxnorm.batch_norm`.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.batch_norm`, and logits not
        of shape ``(3,)``, ``batch_axis`` out of range or the channel axis.
    """
    fn = "switchable_norm"
    weights = resolve_momentum(fn, momentum, convention)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups, where=None,
    )
    w_mean = _mixture(fn, "mean_logits", mean_logits, s.shape)
    w_var = _mixture(fn, "var_logits", var_logits, s.shape)
    spec = pooled_spec(s, example_axes(fn, s, batch_axis, channel_axis), training, MixSpec,
                       channel_axis=s.channel_axis)

    def mix(x, scale, bias, w_mean, w_var):
        xc = x.astype(compute_dtype(x.dtype))
        run_mean, run_var = (s.channel_shaped(t.astype(xc.dtype)) for t in (s.stats.mean, s.stats.var))
        w_mean, w_var = (w.astype(xc.dtype) for w in (w_mean, w_var))
        y, batch = switch_normalize(spec, xc, scale, bias, w_mean, w_var, run_mean, run_var)
        new = fold_batch(s, Moments(*batch), weights=weights, convention=convention, fn=fn) if training else s.stats
        return y.astype(x.dtype), new

    # Reverse mode keeps x and the IN moments; x − μ is recomputed.
    return keep_statistics(mix)(s.x, s.scale, s.bias, w_mean, w_var)


@dataclasses.dataclass(frozen=True)
class MixSpec(PooledSpec):
    """Static settings of :func:`switch_normalize`: :class:`~jaxnorm._schemes.batch.pooled_sets.PooledSpec` and the channel axis.

    Attributes:
      channel_axis: the channel axis (the LN sets pool IN sets over it).
    """

    channel_axis: int = -1

    def layer(self) -> Reduction:
        """The IN sets of one example, pooled over its channels: the LN sets."""
        return Reduction((self.channel_axis,))


@dataclasses.dataclass
class _Sources:
    """Each source's ``d_k = μ_k − s``, ``σ²_k``, pooling ``P_k`` and count, on IN-set shapes."""

    shift: jax.Array
    d: list
    var: list
    pools: list
    counts: list
    batch: Moments | None


def _sources(spec: MixSpec, x, run_mean, run_var) -> _Sources:
    """One pass of IN moments, pooled exactly into the LN and (training) BN sources."""
    inst = moments(x, spec.instance())
    layer = pool_sets(inst, spec.layer())
    batch = pool_sets(inst, spec.batch()) if spec.training else None
    shift = inst.shift

    def offset(mo):
        return (mo.shift - shift) + mo.mean_shifted

    d = [offset(inst), offset(layer)]
    var = [inst.var, layer.var]
    pools = [lambda t: t, spec.layer().sum]
    counts = [inst.count, layer.count]
    if spec.training:
        d.append(offset(batch))
        var.append(batch.var)
        pools.append(spec.batch().sum)
        counts.append(batch.count)
    else:
        d.append(run_mean - shift)
        var.append(run_var)
        pools.append(None)
        counts.append(None)
    return _Sources(shift, d, var, pools, counts, batch)


def _mix(w, terms):
    """``Σ_k w_k · terms_k``."""
    return sum(w[k] * terms[k] for k in range(len(terms)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def switch_normalize(spec: MixSpec, x, scale, bias, w_mean, w_var, run_mean, run_var):
    """``y`` and the batch moments (training; ``()`` in inference).

    Args:
      spec: static settings.
      x: input in the compute dtype.
      scale, bias: None or arrays broadcastable to ``x``, constant over the
        spatial axes.
      w_mean, w_var: ``(3,)`` mixture weights over (IN, LN, BN).
      run_mean, run_var: running statistics shaped to broadcast against
        ``x`` (used in inference).

    Returns:
      ``(y, batch)``: the output in ``x``'s dtype, and the BN source's
      :class:`jaxnorm._core.moments.Moments` (no derivative) or ``()``.
    """
    src = _sources(spec, x, run_mean, run_var)
    y = _output(spec, x, scale, bias, w_mean, w_var, src)
    return y, frozen(src.batch)


def _output(spec, x, scale, bias, w_mean, w_var, src):
    """``((x − s) − D)·r·scale + bias``."""
    r = statistic(inverse_std(_mix(w_var, src.var), spec.epsilon))
    a = r if scale is None else r * scale
    offset = _mix(w_mean, src.d)
    y = ((x - src.shift) - offset) * a
    return y if bias is None else y + bias



@switch_normalize.defjvp
def _switch_normalize_jvp(spec, primals, tangents):
    x, scale, bias, w_mean, w_var, run_mean, run_var = primals
    x_dot, scale_dot, bias_dot, w_mean_dot, w_var_dot, run_mean_dot, run_var_dot = tangents
    src = _sources(spec, x, run_mean, run_var)
    y = _output(spec, x, scale, bias, w_mean, w_var, src)
    r = statistic(inverse_std(_mix(w_var, src.var), spec.epsilon))
    offset = _mix(w_mean, src.d)

    a_sum, b_sum = tangent_sums(x, x_dot, src.shift, spec.instance())
    mean_dot, half_var_dot = [], []
    for k, pool in enumerate(src.pools):
        if pool is None:  # the running statistics
            mean_dot.append(run_mean_dot)
            half_var_dot.append(run_var_dot / 2)
            continue
        safe = jnp.maximum(src.counts[k], 1)
        mean_dot.append(pool(a_sum) / safe)
        half_var_dot.append(pool(b_sum - src.d[k] * a_sum) / safe)
    # The output uses μ − s = Σ w_k d_k (the weights sum to 1), so the
    # weights' tangents enter as Σ ẇ_k d_k: no s·Σẇ_k term, which is 0 in
    # exact arithmetic and, rounded, s times a residue (2.8e-3 at mean 1e4).
    mu_dot = _mix(w_mean, mean_dot) + _mix(w_mean_dot, src.d)
    half_sigma_dot = _mix(w_var, half_var_dot) + _mix(w_var_dot, src.var) / 2
    gamma = 1 if scale is None else scale
    a = r * gamma
    u = -(gamma * r * r * r) * half_sigma_dot
    if scale is not None:
        u = u + r * scale_dot
    v = -a * mu_dot
    if bias is not None:
        v = v + bias_dot
    t = lower_per_platform(x, src.shift, offset, a, u, v, x_dot, cpu=_tangent, accelerator=_tangent)
    batch = frozen(src.batch)
    return (y, batch), (t, tuple(jnp.zeros_like(b) for b in batch))


def _tangent(x, shift, offset, a, u, v, x_dot):
    """``ẏ = ((x − s) − D)·u + v + a·ẋ``, linear in ``(u, v, x_dot)``.

    In the CPU program ẋ's side is in view 1 (its transpose is the dx pass)
    and the output's side in view 0 (its transpose is the per-IN-set sums).
    """
    return ((x - shift) - offset) * u + v + unview(view(a, 1, x) * view(x_dot, 1, x), x.shape)
