"""BatchNorm and Ghost BatchNorm: statistics over the batch, across devices.

Uses: jaxnorm._core (moments, normalize, params, reduction, validate),
jaxnorm._schemes.batch (batch_setup, running_stats).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxnorm._core import validate as check
from jaxnorm._schemes.batch.batch_setup import BatchSetup, by_channel, setup
from jaxnorm._schemes.batch.running_stats import (
    DEFAULT_MOMENTUM,
    resolve_momentum,
    update_stats,
)
from jaxnorm._core.moments import Moments, compute_dtype, moments
from jaxnorm._core.normalize import NormSpec, normalize_with_stats
from jaxnorm._core.params import apply_affine
from jaxnorm._core.reduction import inverse_std

__all__ = ["batch_moments", "batch_norm", "fold_batch", "pool_batch", "running_normalize"]


def batch_moments(s: BatchSetup, x=None, scale=None, bias=None, masked_output: str = "zero"):
    """Normalize ``x`` (default ``s.x``) with its batch statistics.

    Returns:
      ``(y, moments)``: the output in the caller's shape, and the batch
      :class:`~jaxnorm._core.moments.Moments` per set (keepdims shapes, no gradient).
    """
    x = s.x if x is None else x
    spec = NormSpec(s.reduction, s.epsilon, center=True, masked_output=masked_output)
    y, *stats = normalize_with_stats(x, scale, bias, s.where, spec)
    return s.restore(y), Moments(*stats)


def _real_dtype(dtype):
    """``dtype`` itself, or the real dtype of its parts when complex."""
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.dtype(dtype)


def running_normalize(s: BatchSetup, mean, var, scale=None, bias=None, x=None, masked_output: str = "zero"):
    """``(x − mean)·rsqrt(var + ε)·scale + bias`` with given ``(C,)`` statistics.

    Masked entries output 0 (``masked_output="zero"``) or are normalized like
    the others (``"normalized"``).
    """
    x = s.x if x is None else x
    dtype = compute_dtype(x.dtype)
    mean = s.channel_shaped(jnp.asarray(mean, jnp.promote_types(dtype, jnp.result_type(mean))))
    var = s.channel_shaped(jnp.asarray(var, _real_dtype(dtype)))
    c = x.astype(mean.dtype) - mean
    if s.where is not None and masked_output == "zero":
        # Selected before the affine map, so that a masked NaN never meets a
        # zero cotangent in the parameters' gradients.
        c = jnp.where(s.where, c, 0)
    y = apply_affine(c * inverse_std(var, s.epsilon), scale, bias)
    if s.where is not None and masked_output == "zero":
        y = jnp.where(s.where, y, 0)
    return s.restore(y.astype(jnp.promote_types(x.dtype, y.dtype) if jnp.iscomplexobj(y) else x.dtype))


def _complex_moments(s: BatchSetup, scale, bias, masked_output: str):
    """Complex BatchNorm as flax defines it: ``y = (x − μ)·rsqrt(σ² + ε)·scale + bias``.

    ``μ = E[Re x] + i·E[Im x]`` and the real ``σ² = E|x − μ|² = Var[Re x] +
    Var[Im x]``. The moments of the real and imaginary parts are the exact
    shifted moments of :func:`jaxnorm._core.moments.moments`, taken in one call
    (and one collective across ``axis_name``) on the parts stacked along a
    new last axis; ``x − μ`` is formed part by part as ``(x − shift) −
    mean_shifted``. Differentiated by JAX through those moments (a real
    loss of the output gives JAX's conjugate gradient, as for flax).

    Returns:
      ``(y, (mean, var, count))``: the output in the caller's shape, and the
      per-set complex mean, real variance and entry count (keepdims shapes,
      no gradient).
    """
    x = s.x
    dtype = compute_dtype(x.dtype)
    real = _real_dtype(dtype)
    parts = (jnp.real(x).astype(real), jnp.imag(x).astype(real))
    where = None if s.where is None else s.where[..., None]
    mo = moments(jnp.stack(parts, axis=-1), s.reduction, where=where)
    shift, mean_shifted, var2 = (jnp.moveaxis(t, -1, 0) for t in (mo.shift, mo.mean_shifted, mo.var))
    count = mo.count if jnp.ndim(mo.count) == 0 else mo.count[..., 0]
    var = var2[0] + var2[1]
    centred = [(p - sh) - m for p, sh, m in zip(parts, shift, mean_shifted)]
    if s.where is not None:
        # Selected before any product, so that no masked value (NaN included)
        # meets a zero cotangent; "normalized" keeps them for the output only.
        selected = [jnp.where(s.where, c, 0) for c in centred]
        if masked_output == "zero":
            centred = selected
    c = lax.complex(*centred)
    rstd = inverse_std(var, s.epsilon)
    a = rstd if scale is None else rstd * scale
    y = c * a if bias is None else c * a + bias
    if s.where is not None and masked_output == "zero":
        y = jnp.where(s.where, y, 0)
    y = y.astype(jnp.promote_types(x.dtype, y.dtype))
    mean = lax.complex(shift[0] + mean_shifted[0], shift[1] + mean_shifted[1])
    stats = tuple(lax.stop_gradient(t) for t in (mean, var, count))
    return s.restore(y), stats


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
    masked_output: str = "zero",
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

    Complex inputs follow flax.linen's complex BatchNorm: the mean is
    complex, ``E[Re x] + i·E[Im x]``, and the variance real,
    ``E|x − μ|² = Var[Re x] + Var[Im x]``; a real running mean becomes
    complex when a complex batch is folded in (``momentum·old + (1 −
    momentum)·mean``), the running variance stays real. Scale and bias may
    be real or complex.

    One value per channel in training (a ``(1, C)`` batch, or one example
    per member inside ``vmap``/``scan`` without ``axis_name``) gives a zero
    variance, so the output is ``bias``: the Flax convention warns and goes
    on, as flax does; PyTorch's raises, as PyTorch does.

    The same call serves a batch and a single example: inside
    ``jax.vmap(..., axis_name="batch")`` on per-example inputs it equals the
    call on the whole batch, and under ``pmap``/``shard_map`` it uses the
    global batch. Across members the moments are pooled exactly with one
    collective (see :mod:`jaxnorm._core.moments`); under ``jit`` with a sharded
    batch no ``axis_name`` is needed.

    Args:
      x: floating or complex array ``(N, ..., C)`` (or ``(N, C, ...)`` with
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
      where: optional boolean mask that broadcasts to ``x`` (NumPy rules):
        False entries (padding) are left out of the statistics; their
        outputs are set by ``masked_output``.
      virtual_batch_size: Ghost BatchNorm: split axis 0 into virtual batches
        of this size, each normalized with its own statistics; the running
        statistics receive their count-weighted average.
      convention: ``"flax"`` or ``"torch"`` (see above).
      masked_output: ``"zero"`` (default): masked entries output 0 (zero
        derivative); ``"normalized"``: they are normalized like the others,
        with the statistics of the selected entries (flax's modules; in
        inference the mask then changes nothing).

    Returns:
      ``(y, new_stats)``: ``y`` with ``x``'s shape and dtype; ``new_stats``
      the updated :class:`BatchStats` (unchanged when ``training=False`` or
      the batch has no entries). The statistics carry no gradient.

    Raises:
      TypeError: integer inputs or parameters, a non-bool ``training``.
      ValueError: parameters or statistics of the wrong shape, axes out of
        range, an unbound ``axis_name``, a batch not divisible by
        ``virtual_batch_size``, a training reduction over one value per
        channel with ``convention="torch"``, an invalid momentum,
        convention or masked_output.
    """
    fn = "batch_norm"
    weights = resolve_momentum(fn, momentum, convention)
    masked_output = check.check_masked_output(fn, masked_output)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups,
        where=where, virtual_batch_size=virtual_batch_size,
        single_value="error" if convention == "torch" else "warn", allow_complex=True,
    )
    if not training:
        y = running_normalize(s, s.stats.mean, s.stats.var, s.scale, s.bias, masked_output=masked_output)
        return y, s.stats
    if jnp.iscomplexobj(s.x):
        y, (mean, var, count) = _complex_moments(s, s.scale, s.bias, masked_output)
    else:
        y, mo = batch_moments(s, scale=s.scale, bias=s.bias, masked_output=masked_output)
        mean, var, count = mo.mean, mo.var, mo.count
    mean, var, count = pool_batch(s, mean, var, count, unbiased=convention == "torch")
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
