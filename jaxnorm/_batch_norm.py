"""BatchNorm and Ghost BatchNorm: statistics over the batch, across devices."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxnorm._batch_setup import BatchSetup, by_channel, setup
from jaxnorm._batch_stats import (
    DEFAULT_MOMENTUM,
    resolve_momentum,
    update_stats,
)
from jaxnorm._normalize import NormSpec, normalize_with_stats
from jaxnorm._params import apply_affine
from jaxnorm._reduction import inverse_std
from jaxnorm._stats import Moments, compute_dtype

__all__ = ["batch_moments", "batch_norm", "fold_batch", "pool_batch", "running_normalize"]


def batch_moments(s: BatchSetup, x=None, scale=None, bias=None):
    """Normalize ``x`` (default ``s.x``) with its batch statistics.

    Returns:
      ``(y, moments)``: the output in the caller's shape, and the batch
      :class:`~jaxnorm._stats.Moments` per set (keepdims shapes, no gradient).
    """
    x = s.x if x is None else x
    spec = NormSpec(s.reduction, s.epsilon, center=True)
    y, *stats = normalize_with_stats(x, scale, bias, s.where, spec)
    return s.restore(y), Moments(*stats)


def running_normalize(s: BatchSetup, mean, var, scale=None, bias=None, x=None):
    """``(x − mean)·rsqrt(var + ε)·scale + bias`` with given ``(C,)`` statistics."""
    x = s.x if x is None else x
    dtype = compute_dtype(x.dtype)
    mean, var = (s.channel_shaped(jnp.asarray(t, dtype)) for t in (mean, var))
    y = apply_affine((x.astype(dtype) - mean) * inverse_std(var, s.epsilon), scale, bias)
    if s.where is not None:
        y = jnp.where(s.where, y, 0)
    return s.restore(y.astype(x.dtype))


def batch_norm(
    x,
    scale,
    bias,
    stats,
    *,
    training: bool,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    where=None,
    virtual_batch_size: int | None = None,
    convention: str = "flax",
):
    """Batch normalization (Ioffe & Szegedy 2015), Ghost BatchNorm (Hoffer et al. 2017).

    Training normalizes with the batch's mean and biased variance per
    channel, over every axis but ``channel_axis`` and across ``axis_name``;
    inference uses the running statistics::

        y = (x − μ) / sqrt(σ² + ε) · scale + bias

    and training also folds the batch into the running statistics. Flax
    convention (default): ``new = momentum·old + (1 − momentum)·batch``,
    biased variance. PyTorch's (``convention="torch"``): ``momentum`` is the
    update weight (default 0.1), ``new = (1 − momentum)·old + momentum·batch``,
    the variance stored unbiased (``·n/(n − 1)``), and ``momentum=None`` is
    the cumulative average over ``stats.count`` batches.

    The same call serves a batch and a single example: inside
    ``jax.vmap(..., axis_name="batch")`` on per-example inputs it equals the
    call on the whole batch, and under ``pmap``/``shard_map`` it uses the
    global batch. Across members the moments are pooled exactly with one
    collective (see :mod:`jaxnorm._stats`); under ``jit`` with a sharded
    batch no ``axis_name`` is needed.

    Args:
      x: floating array ``(N, ..., C)`` (or ``(N, C, ...)`` with
        ``channel_axis=1``); inside ``vmap`` one example, e.g. ``(..., C)``.
      scale: None, ``(C,)``, or per example ``(N, C)`` (conditional BN).
      bias: like ``scale``.
      stats: :class:`BatchStats` with ``(C,)`` running mean and variance.
      training: use (and update) batch statistics, or use the running ones.
      momentum: decay of the running statistics (Flax), or PyTorch's update
        weight with ``convention="torch"``; None = cumulative average (torch).
      epsilon: added to the variance inside the square root.
      channel_axis: the channel axis (default -1).
      axis_name: name(s) of the vmap/pmap/shard_map axis to pool across.
      axis_index_groups: pool within these groups of members only (pmap).
      where: optional boolean mask of ``x``'s rank (each axis equal or 1):
        False entries (padding) are left out of the statistics and output 0.
      virtual_batch_size: Ghost BatchNorm: split axis 0 into virtual batches
        of this size, each normalized with its own statistics; the running
        statistics receive their count-weighted average.
      convention: ``"flax"`` or ``"torch"`` (see above).

    Returns:
      ``(y, new_stats)``: ``y`` with ``x``'s shape and dtype; ``new_stats``
      the updated :class:`BatchStats` (unchanged when ``training=False`` or
      the batch has no entries). The statistics carry no gradient.

    Raises:
      TypeError: integer inputs or parameters, a non-bool ``training``.
      ValueError: parameters or statistics of the wrong shape, axes out of
        range, an unbound ``axis_name``, a batch not divisible by
        ``virtual_batch_size``, a training reduction over one value per
        channel, an invalid momentum or convention.
    """
    fn = "batch_norm"
    weights = resolve_momentum(fn, momentum, convention)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups,
        where=where, virtual_batch_size=virtual_batch_size,
    )
    if not training:
        return running_normalize(s, s.stats.mean, s.stats.var, s.scale, s.bias), s.stats
    y, mo = batch_moments(s, scale=s.scale, bias=s.bias)
    mean, var, count = pool_batch(s, mo.mean, mo.var, mo.count, unbiased=convention == "torch")
    new = update_stats(s.stats, mean, var, count, weights=weights, unbiased=False, fn=fn)
    return y, new


def pool_batch(s: BatchSetup, mean, var, count, *, unbiased: bool):
    """Per-channel ``(mean, var, count)`` of the batch, from per-set statistics.

    With Ghost BatchNorm the virtual batches' moments are averaged, weighted
    by their entry counts; ``unbiased`` corrects each set's variance by
    ``n/(n − 1)`` first (PyTorch's running variance).
    """
    count = jnp.broadcast_to(count, mean.shape)
    if unbiased:
        var = var * count / jnp.maximum(count - 1, 1)
    mean, var, count = (by_channel(t, s) for t in (mean, var, count))
    if mean.shape[0] == 1:
        return mean[0], var[0], count[0]
    total = jnp.sum(count, axis=0)
    safe = jnp.maximum(total, 1)
    return jnp.sum(count * mean, axis=0) / safe, jnp.sum(count * var, axis=0) / safe, total


def fold_batch(s: BatchSetup, mo: Moments, *, weights, convention: str, fn: str):
    """The running statistics after this batch's ``mo`` (no gradient flows into them)."""
    mo = Moments(*(lax.stop_gradient(t) for t in mo))
    mean, var, count = pool_batch(s, mo.mean, mo.var, mo.count, unbiased=convention == "torch")
    return update_stats(s.stats, mean, var, count, weights=weights, unbiased=False, fn=fn)
