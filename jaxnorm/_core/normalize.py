"""Normalize-and-affine over a reduction set, with a closed-form derivative.

This is the one function every batch-independent scheme ends in::

    x̂ = (x − μ) · rstd,   rstd = 1 / sqrt(var + ε),   y = x̂ · γ + β

(``μ = 0`` and ``var = E[x²]`` when uncentered, as in RMSNorm). Statistics
come from :mod:`jaxnorm._core.moments`; ``γ`` and ``β`` arrive already shaped to
broadcast against ``x`` (per channel or per example).

Derivative. Rather than differentiating the statistics op by op, the tangent is
given in closed form (Ioffe & Szegedy 2015, generalized to any reduction
set), with ``E`` the mean over a set::

    ẏ = γ · rstd · (ẋ − E[ẋ] − x̂ · E[ẋ · x̂]) + x̂ · γ̇ + β̇

(without the ``E[ẋ]`` term when uncentered). It is a ``jax.custom_jvp``: the
rule is linear in the tangents, so JAX transposes it for reverse mode (giving
``dx = γ·rstd·(g − E[g] − x̂·E[g·x̂])``), and it is itself made of JAX
operations, so forward mode and every higher order keep working.

The forward pass alone (never differentiated: the rule is) reads ``x``
once for the statistics (:func:`jaxnorm._core.moments.moments`) and once for the
output. The CPU program arranges it for XLA:CPU instead
(:func:`jaxnorm._lowering.xla_cpu.conditioned_forward`).

Reverse mode stores only ``x`` and the per-set statistics
(``jax.checkpoint``) and recomputes ``x̂``, fused, in the backward pass. The
rule is written so that its transpose is the hand-derived backward with the
fewest passes over the data (``_tangent``): per-set sums of ``γ·g`` and
``γ·(x − shift)·g``, which need no statistics and so share a read of
``(x, g)``, then one elementwise pass for ``dx`` and ``dγ``. The CPU program
transposes the same math arranged for XLA:CPU
(:func:`jaxnorm._lowering.xla_cpu.normalize_tangent`), through
:func:`jaxnorm._lowering.per_platform.lower_per_platform`.

Uses: jaxnorm._core (moments, reduction, remat), jaxnorm._lowering
(per_platform, xla_cpu).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core.moments import Reduction, compute_dtype, moments, shifted_default
from jaxnorm._core.reduction import inverse_std
from jaxnorm._core.remat import STATISTICS, statistic
from jaxnorm._lowering import xla_cpu
from jaxnorm._lowering.per_platform import lower_per_platform, requested

__all__ = ["NormSpec", "normalize", "normalize_with_stats"]


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """Static settings of :func:`normalize`.

    Attributes:
      reduction: the sets of entries that share statistics.
      epsilon: added to the variance inside the square root.
      center: subtract the mean (False for RMSNorm).
      shifted: exact shifted moments; False only inside
        :func:`jaxnorm._core.moments.unshifted_statistics` (measurement).
      masked_output: what masked (``where=False``) entries output: ``"zero"``
        (0, with a zero derivative), or ``"normalized"`` (flax's modules:
        ``(x − μ)·rstd·γ + β`` with the statistics of the selected entries,
        differentiated as such). Unused without a mask.
      programs: :func:`jaxnorm._lowering.per_platform.requested` when the spec was made
        (a static setting, so that a cached trace is never reused across
        ``JAXNORM_CPU_LOWERING`` settings).
    """

    reduction: Reduction
    epsilon: float
    center: bool = True
    shifted: bool = dataclasses.field(default_factory=shifted_default)
    masked_output: str = "zero"
    programs: str = dataclasses.field(default_factory=requested)


def normalize(x, scale, bias, where, spec: NormSpec) -> jax.Array:
    """``(x − μ)·rstd·scale + bias`` over ``spec.reduction``, in ``x.dtype``.

    Args:
      x: floating input.
      scale, bias: None, or arrays of ``x``'s rank that broadcast against it.
      where: None, or a boolean mask of ``x``'s rank that broadcasts against
        it. Masked entries are left out of the statistics; their outputs are
        0, or normalized with the selected entries' statistics
        (``spec.masked_output``).
      spec: the static settings.

    Returns:
      The normalized array, with ``x``'s shape and dtype.
    """
    return _normalize_remat(spec, x, scale, bias, where)[0]


def normalize_with_stats(x, scale, bias, where, spec: NormSpec):
    """:func:`normalize`, also returning the statistics it used.

    Returns:
      ``(y, shift, mean_shifted, var, count)``: the output, and each set's
      statistics as in :class:`jaxnorm._core.moments.Moments` (mean = shift +
      mean_shifted; biased variance; entry count), keepdims shapes, compute
      dtype. The statistics carry no derivative (zero tangents): they are
      meant for running averages, not for the loss.
    """
    return _normalize_remat(spec, x, scale, bias, where)


def _prepare(spec: NormSpec, x, scale, where):
    """Per-set statistics and the centered input ``c = x − μ`` (0 where masked).

    Returns ``(c, rstd, a, means, stats)`` with ``a = rstd·scale``, ``means``
    a function giving the masked means over a set of one or more arrays
    (one collective across devices), and ``stats`` the statistics
    ``(shift, mean_shifted, var, count)`` without gradient. ``means`` also
    carries ``shift`` and ``mean_shifted`` with their derivatives, as
    ``means.centre``.
    """
    xc = x.astype(compute_dtype(x.dtype))
    mo = moments(xc, spec.reduction, where=where, center=spec.center, shifted=spec.shifted)
    shift, mean_shifted, count = mo.shift, mo.mean_shifted, mo.count  # named by moments()
    rstd = statistic(inverse_std(mo.var, spec.epsilon))
    c = (xc - shift) - mean_shifted if spec.center else xc
    if where is not None:
        c = jnp.where(where, c, 0)
    a = rstd if scale is None else rstd * scale
    safe_count = jnp.maximum(count, 1)

    def means(*ts):
        if where is not None:
            ts = [jnp.where(where, t, 0) for t in ts]
        sums = spec.reduction.sum(*ts)
        if len(ts) == 1:
            return sums / safe_count
        return tuple(t / safe_count for t in sums)

    means.centre = (shift, mean_shifted)
    stats = tuple(lax.stop_gradient(t) for t in (mo.shift, mo.mean_shifted, mo.var, count))
    return c, rstd, a, means, stats


def _finish(y, where, dtype):
    if where is not None:
        y = jnp.where(where, y, 0)
    return y.astype(dtype)


def _zeroed(spec, where):
    """The mask by which outputs (and their tangents) are set to 0: ``where``, or None for ``"normalized"``."""
    return where if spec.masked_output == "zero" else None


def _output_centred(spec, x, c, centre, where):
    """``x − μ`` for the outputs: ``c`` (0 at masked entries) in ``"zero"`` mode.

    In ``"normalized"`` mode the masked entries keep ``(x − shift) − mean_shifted``
    (``x`` uncentered), as ``c`` was before selection; ``c`` itself (0
    there) still feeds every mean, so that their transposes never multiply
    a masked entry's value.
    """
    if where is None or spec.masked_output == "zero":
        return c
    xc = x.astype(c.dtype)
    if not spec.center:
        return xc
    shift, mean_shifted = centre
    return (xc - shift) - mean_shifted


def _affine(spec, x, c, a, centre, bias):
    """``y = c·a + β`` with ``c = (x − shift) − mean_shifted``.

    Where ``a = rstd·γ`` is one value per set (BatchNorm, GroupNorm,
    InstanceNorm with per-channel or per-example parameters), it is folded
    to ``(x − shift)·a + (β − mean_shifted·a)``: one subtraction fewer per
    entry, the rest computed per set. ``x − shift`` stays exact, and
    ``mean_shifted·a`` is of the order of the spread, so nothing cancels.
    """
    shift, mean_shifted = centre
    per_set = jnp.broadcast_shapes(a.shape, jnp.shape(mean_shifted)) == jnp.shape(mean_shifted)
    if not (spec.center and per_set):
        return c * a if bias is None else c * a + bias
    offset = -mean_shifted * a if bias is None else bias - mean_shifted * a
    return (x.astype(a.dtype) - shift) * a + offset


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _normalize(spec, x, scale, bias, where):
    if where is None and spec.center and spec.shifted and spec.reduction.axis_name is None:
        return lower_per_platform(
            x, scale, bias,
            cpu=functools.partial(_cpu_forward, spec),
            accelerator=functools.partial(_forward, spec, where=None),
        )
    return _forward(spec, x, scale, bias, where)


def _forward(spec, x, scale, bias, where):
    """``(y, shift, mean_shifted, var, count)``: the statistics (one read of ``x``), then the output."""
    c, _, a, means, stats = _prepare(spec, x, scale, where)
    if where is None:
        y = _affine(spec, x, c, a, means.centre, bias)
    else:
        c = _output_centred(spec, x, c, means.centre, where)
        y = c * a if bias is None else c * a + bias
    return (_finish(y, _zeroed(spec, where), x.dtype),) + stats


def _cpu_forward(spec, x, scale, bias):
    """The CPU program's forward: :func:`~jaxnorm._lowering.xla_cpu.conditioned_forward`, this module's affine map."""
    xc = x.astype(compute_dtype(x.dtype))
    count = jnp.asarray(spec.reduction.size(x.shape), xc.dtype)
    y, shift, mean_shifted, var = xla_cpu.conditioned_forward(
        xc, spec.reduction, count, spec.epsilon, scale, bias,
        lambda mo, a: _affine(spec, x, (xc - mo.shift) - mo.mean_shifted, a, (mo.shift, mo.mean_shifted), bias),
    )
    return (_finish(y, None, x.dtype), shift, mean_shifted, var, count)


@_normalize.defjvp
def _normalize_jvp(spec, primals, tangents):
    x, scale, bias, where = primals
    if where is not None:
        return _masked_jvp(spec, primals, tangents)
    x_dot, scale_dot, bias_dot, _ = tangents
    c, rstd, a, means, stats = _prepare(spec, x, scale, None)
    y = _finish(_affine(spec, x, c, a, means.centre, bias), None, x.dtype)
    count = stats[3]
    t = lower_per_platform(
        x, means.centre, rstd, count, scale, x_dot, scale_dot, bias_dot,
        cpu=functools.partial(xla_cpu.normalize_tangent, spec.reduction, spec.center),
        accelerator=functools.partial(_tangent, spec),
    )
    zeros = tuple(jnp.zeros_like(s) for s in stats)
    return (y,) + stats, (_finish(t, None, x.dtype),) + zeros


def _tangent(spec, x, centre, rstd, count, scale, x_dot, scale_dot, bias_dot):
    """ẏ without a mask (the accelerator program), linear in ``(x_dot, scale_dot, bias_dot)``.

    With ``d = x − shift`` (exact), ``m = mean_shifted`` and per-set
    ``P = rstd·E[ẋ]`` and ``Q = rstd²·E[x̂·ẋ] = rstd³·(E[d·ẋ] − m·E[ẋ])``::

        ẏ = γ·(rstd·ẋ − d·Q + (m·Q − P)) + x̂·γ̇ + β̇

    which is ``γ·rstd·(ẋ − E[ẋ] − x̂·E[x̂·ẋ]) + x̂·γ̇ + β̇`` with every per-set
    factor applied after its broadcast. Its transpose (reverse mode) then
    sums ``γ·g`` and ``γ·d·g`` per set, which need no statistics (``d``
    comes from the sampled shift), so they share a read of ``(x, g)`` with
    the forward's statistics when both are in one program; ``dx`` and
    ``dγ`` follow in one more pass. Uncentered (RMSNorm): ``d = x``, ``m = 0``,
    no ``P``. ``d`` and ``m`` are of the order of the spread, so nothing
    cancels at large means.
    """
    r = spec.reduction
    shift, m = centre
    xc, g = x.astype(rstd.dtype), x_dot.astype(rstd.dtype)
    n = jnp.maximum(count, 1)
    d = xc - shift if spec.center else xc
    if spec.center:
        sum_dg, sum_g = r.sum(d * g, g)
        p = rstd * sum_g / n
        q = rstd * rstd * rstd * (sum_dg - m * sum_g) / n
        inner = rstd * g - d * q + (m * q - p)
    else:
        q = rstd * rstd * rstd * r.sum(d * g) / n
        inner = rstd * g - d * q
    t = inner if scale is None else scale * inner
    if scale_dot is not None:
        t = t + ((d - m) * rstd if spec.center else d * rstd) * scale_dot
    if bias_dot is not None:
        t = t + bias_dot
    return t


def _masked_jvp(spec, primals, tangents):
    """The derivative with a mask (masked entries unused by the statistics).

    ``c`` (0 at masked entries) feeds the means; ``c_out`` the outputs and
    their tangents, which at masked entries are 0 (``"zero"``) or follow
    the same formula as the selected entries (``"normalized"``).
    """
    x, scale, bias, where = primals
    x_dot, scale_dot, bias_dot, _ = tangents
    c, rstd, a, means, stats = _prepare(spec, x, scale, where)
    c_out = _output_centred(spec, x, c, means.centre, where)
    zeroed = _zeroed(spec, where)
    y = _finish(c_out * a if bias is None else c_out * a + bias, zeroed, x.dtype)

    g = x_dot.astype(c.dtype)
    # ẏ = γ·rstd·(ẋ − E[ẋ] − x̂·E[ẋ·x̂]) + x̂·γ̇ + β̇, x̂ = c·rstd. The grouping
    # decides which full-size temporaries XLA keeps (see memory_analysis()).
    if jnp.shape(a) != jnp.shape(c):
        # a = γ·rstd is per set (BatchNorm, GroupNorm, InstanceNorm):
        # ẏ = a·ẋ + c·u + v with u, v as small as a.
        if spec.center:
            mean_gc, mean_g = means(g * c, g)
        else:
            mean_gc, mean_g = means(g * c), None
        u = -(a * rstd * rstd) * mean_gc
        if scale is not None:
            u = u + rstd * scale_dot
        v = -a * mean_g if spec.center else None
        if bias is not None:
            v = bias_dot if v is None else v + bias_dot
        t = a * g + c_out * u
        if v is not None:
            t = t + v
    else:
        # γ varies within a set (LayerNorm, RMSNorm): keep it apart from the
        # per-set factors rather than forming full-size coefficients.
        xhat, xhat_out = c * rstd, c_out * rstd
        if spec.center:
            mean_gx, mean_g = means(g * xhat, g)
            inner = g - xhat_out * mean_gx - mean_g
        else:
            inner = g - xhat_out * means(g * xhat)
        t = rstd * inner
        if scale is not None:
            t = t * scale + xhat_out * scale_dot
        if bias is not None:
            t = t + bias_dot
    zeros = tuple(jnp.zeros_like(s) for s in stats)
    return (y,) + stats, (_finish(t, zeroed, x.dtype),) + zeros


# Reverse mode keeps x and the per-set statistics only; c = x − μ is
# recomputed, fused, in the backward pass instead of being stored.
_normalize_remat = jax.checkpoint(
    _normalize,
    policy=jax.checkpoint_policies.save_only_these_names(STATISTICS),
    static_argnums=(0,),
)
