"""Switchable Normalization (Luo et al. 2019): a learned mixture of IN, LN and BN statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm import _validate as v
from jaxnorm._batch_norm import fold_batch
from jaxnorm._batch_setup import example_axes, setup
from jaxnorm._batch_stats import DEFAULT_MOMENTUM, resolve_momentum
from jaxnorm._pooled import pooled_spec
from jaxnorm._remat import keep_statistics
from jaxnorm._stats import Moments, compute_dtype
from jaxnorm._switch_normalize import MixSpec, switch_normalize

__all__ = ["switchable_norm"]

_SOURCES = ("instance", "layer", "batch")


def _mixture(fn, name, logits, shape):
    """softmax of ``(3,)`` logits (None: equal weights), in at least float32 (16-bit logits are promoted)."""
    if logits is None:
        return jnp.full((3,), 1 / 3)
    logits, _ = v.check_param(
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
    (:mod:`jaxnorm._switch_normalize`). Equal logits (the default, and the
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
