"""Normalize-and-affine over a reduction set, with a closed-form derivative.

This is the one function every batch-independent scheme ends in::

    x̂ = (x − μ) · rstd,   rstd = 1 / sqrt(var + ε),   y = x̂ · γ + β

(``μ = 0`` and ``var = E[x²]`` when uncentered, as in RMSNorm). Statistics
come from :mod:`jaxnorm._stats`; ``γ`` and ``β`` arrive already shaped to
broadcast against ``x`` (per channel or per example).

Derivative. Rather than differentiating the statistics op by op, the tangent is
given in closed form (Ioffe & Szegedy 2015, generalized to any reduction
set), with ``E`` the mean over a set::

    ẏ = γ · rstd · (ẋ − E[ẋ] − x̂ · E[ẋ · x̂]) + x̂ · γ̇ + β̇

(without the ``E[ẋ]`` term when uncentered). It is a ``jax.custom_jvp``: the
rule is linear in the tangents, so JAX transposes it for reverse mode (giving
``dx = γ·rstd·(g − E[g] − x̂·E[g·x̂])``), and it is itself made of JAX
operations, so forward mode and every higher order keep working.

The forward pass alone (never differentiated: the rule is) computes its
output inside the branch of the statistics' ``lax.cond``
(:func:`_forward_conditioned`), so that it compiles to flax.linen's kernels
plus the conditioning test.

Reverse mode stores only ``x`` and the per-set statistics
(``jax.checkpoint``) and recomputes ``x̂``, fused, in the backward pass. The
rule is written so that its transpose is the hand-derived backward with the
fewest passes over the data (see ``_tangent_fine`` and ``_tangent_full``):
per-set sums of ``g`` and ``x̂·g`` (taken once, and shared with ``dγ`` and
``dβ`` where the parameters are constant along some reduced axes), then one
elementwise pass for ``dx``. Where two of those passes would share a
full-size value, they compute it in different views (:mod:`jaxnorm._views`)
so that XLA:CPU recomputes it rather than storing it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._remat import STATISTICS, statistic
from jaxnorm._stats import Reduction, compute_dtype, moments, on_conditioning, shifted_default
from jaxnorm._views import few_sets, split_view, unview, view

__all__ = ["NormSpec", "normalize", "normalize_with_stats"]


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """Static settings of :func:`normalize`.

    Attributes:
      reduction: the sets of entries that share statistics.
      epsilon: added to the variance inside the square root.
      center: subtract the mean (False for RMSNorm).
      shifted: exact shifted moments; False only inside
        :func:`jaxnorm._stats.unshifted_statistics` (measurement).
      masked_output: what masked (``where=False``) entries output: ``"zero"``
        (0, with a zero derivative), or ``"normalized"`` (flax's modules:
        ``(x − μ)·rstd·γ + β`` with the statistics of the selected entries,
        differentiated as such). Unused without a mask.
    """

    reduction: Reduction
    epsilon: float
    center: bool = True
    shifted: bool = dataclasses.field(default_factory=shifted_default)
    masked_output: str = "zero"


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
      statistics as in :class:`jaxnorm._stats.Moments` (mean = shift +
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
    rstd = statistic(lax.rsqrt(mo.var + spec.epsilon))
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
        return _forward_conditioned(spec, x, scale, bias)
    c, _, a, means, stats = _prepare(spec, x, scale, where)
    if where is None:
        y = _affine(spec, x, c, a, means.centre, bias)
    else:
        c = _output_centred(spec, x, c, means.centre, where)
        y = c * a if bias is None else c * a + bias
    return (_finish(y, _zeroed(spec, where), x.dtype),) + stats


def _forward_conditioned(spec, x, scale, bias):
    """The forward pass alone (never differentiated: the rule below is), output inside the conditioning branch.

    :func:`jaxnorm._stats.on_conditioning` runs either branch whole: the
    textbook one computes ``y = (x − μ)·(rstd·γ) + β`` from ``E[x]`` and
    ``E[x²]``, the kernels flax.linen's forward runs; the exact one,
    ``y`` from the shifted moments (:func:`_affine`). Computing ``y`` after
    the ``lax.cond`` instead would give XLA:CPU a selection of two sets of
    statistics to broadcast, and it then adds layout copies and a
    subtraction per entry (``(x − shift) − mean_shifted``).
    """
    xc = x.astype(compute_dtype(x.dtype))
    count = jnp.asarray(spec.reduction.size(x.shape), xc.dtype)

    def coefficient(var):
        rstd = lax.rsqrt(var + spec.epsilon)
        return rstd if scale is None else rstd * scale

    def textbook(mean, var):
        y = (xc - mean) * coefficient(var)
        y = y if bias is None else y + bias
        return y, mean, jnp.zeros_like(mean), var

    def shifted(mo):
        centre = (mo.shift, mo.mean_shifted)
        c = (xc - mo.shift) - mo.mean_shifted
        return _affine(spec, x, c, coefficient(mo.var), centre, bias), mo.shift, mo.mean_shifted, mo.var

    y, shift, mean_shifted, var = on_conditioning(xc, spec.reduction, count, textbook, shifted)
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
    fine = _fine_axes(spec.reduction, scale, bias)
    xhat = functools.partial(_xhat, spec, x.astype(c.dtype), means.centre, rstd)
    g = x_dot.astype(c.dtype)
    if fine:
        t = _tangent_fine(spec, fine, g, x.astype(c.dtype), means.centre, rstd, a, count, scale_dot, bias_dot)
    else:
        t = _tangent_full(spec, g, xhat, rstd, scale, count, scale_dot, bias_dot)
    zeros = tuple(jnp.zeros_like(s) for s in stats)
    return (y,) + stats, (_finish(t, None, x.dtype),) + zeros


def _xhat(spec, xc, centre, rstd, k):
    """``x̂ = ((x − shift) − mean_shifted) · rstd`` (``x · rstd`` uncentered), in view ``k``.

    ``k = "split"`` is :func:`jaxnorm._views.split_view`.
    """
    shift, mean_shifted = centre
    if k == "split":
        v = functools.partial(split_view, like=xc)
    else:
        v = functools.partial(view, k=k, like=xc)
    c = (v(xc) - v(shift)) - v(mean_shifted) if spec.center else v(xc)
    return c * v(rstd)


def _fine_axes(reduction, scale, bias) -> tuple[int, ...]:
    """Reduced axes along which ``scale`` and ``bias`` are constant."""
    return tuple(
        ax for ax in reduction.axes
        if all(p is None or jnp.shape(p)[ax] == 1 for p in (scale, bias))
    )


def _tangent_fine(spec, fine, g, xc, centre, rstd, a, count, scale_dot, bias_dot):
    """ẏ when ``a = γ·rstd`` is constant along the ``fine`` reduced axes (BN, GN, IN).

    Written as ``ẏ = a·ẋ + x̂·U + V`` with ``U = γ̇ − a·E[x̂·ẋ]`` and
    ``V = β̇ − a·E[ẋ]`` of the "fine" shape (1 along ``fine``), so that its
    transpose sums ``g`` and ``x̂·g`` over ``fine`` once, and both the
    parameters' gradients and the per-set means come from those partials.
    ``x̂`` enters only as ``d = x − shift`` with per-set factors
    (``x̂ = d·rstd − mean_shifted·rstd``): ``x̂·U = d·(rstd·U) − mean_shifted·rstd·U``
    and ``E[x̂·ẋ] = rstd·(E[d·ẋ] − mean_shifted·E[ẋ])``. ``d`` is exact, and
    ``mean_shifted`` is of the order of the spread (the mean's distance from
    one entry of the set; 0 for the textbook moments), as in the shifted
    moments themselves, so nothing cancels beyond what they allow; each pass
    does two operations fewer than with ``x̂`` itself (GroupNorm's sums keep
    ``x̂``; see the code).

    Args:
      xc: ``x`` in the compute dtype; ``centre``: ``(shift, mean_shifted)``;
        ``rstd``: per set. The rest as in :func:`_tangent_full`.
    """
    r = spec.reduction
    rest = dataclasses.replace(r, axes=tuple(ax for ax in r.axes if ax not in fine))
    shape = tuple(1 if ax in fine else n for ax, n in enumerate(g.shape))
    safe_count = jnp.maximum(count, 1)
    shift, mean_shifted = centre

    def fine_sum(t):
        return jnp.sum(unview(t, g.shape), fine, keepdims=True)

    def d(k):  # x − shift (x uncentered) in view k
        return view(xc, k, g) - view(shift, k, g) if spec.center else view(xc, k, g)

    # ẋ's side in view 1 (its transpose is the dx fusion), the outputs' side
    # in view 0 (its transpose is the sums over ``fine``).
    g1 = view(g, 1, g)
    if spec.center:
        sum_dg, sum_g = rest.sum(fine_sum(d(1) * g1), fine_sum(g1))
        mean_g = sum_g / safe_count
        mean_gx = rstd * (sum_dg / safe_count - mean_shifted * mean_g)
    else:
        mean_gx, mean_g = rstd * (rest.sum(fine_sum(d(1) * g1)) / safe_count), None
    u = -a * mean_gx
    # The barriers keep XLA from merging, in the transpose, the sum over the
    # remaining axes into the sum over ``fine`` (which would leave x̂·g to be
    # summed twice, and stored in between).
    if scale_dot is not None:
        u = u + lax.optimization_barrier(jnp.broadcast_to(scale_dot, shape))
    v = -a * mean_g if spec.center else None
    if r.group_axis is None:
        ru = rstd * u
        t = d(0) * ru
        if spec.center:
            v = v - mean_shifted * ru
    else:
        # With groups (GroupNorm) the sums side keeps x̂ itself: folded, it
        # measured 13% slower at 16×32×32×256 (3–8% faster on the smaller
        # benchmark shapes), where the unfolded one beats flax.linen.
        t = (((d(0) - mean_shifted) if spec.center else d(0)) * rstd) * u
    if bias_dot is not None:
        bias_dot = lax.optimization_barrier(jnp.broadcast_to(bias_dot, shape))
        v = bias_dot if v is None else v + bias_dot
    if v is not None:
        t = t + v
    return t + unview(view(a, 1, g) * g1, g.shape)


def _tangent_full(spec, g, xhat, rstd, scale, count, scale_dot, bias_dot):
    """ẏ when ``γ`` varies along every reduced axis (LayerNorm, RMSNorm).

    ``ẏ = γ·rstd·(ẋ − E[ẋ] − x̂·E[x̂·ẋ]) + x̂·γ̇ + β̇``; its transpose is one
    fusion of per-set sums and ``dx``, and a separate (differently viewed)
    sum for ``dγ``. With fewer than 4096 sets on XLA:CPU the per-set factors
    are applied at full size (:func:`_rstd_inner_spread`) to keep that fusion.
    """
    safe_count = jnp.maximum(count, 1)
    xh = xhat(0)
    r = spec.reduction
    kept = tuple(ax for ax in range(g.ndim) if ax not in r.axes)
    sets = tuple(g.shape[ax] for ax in kept)
    if r.group_axis is None and r.axis_name is None and few_sets(math.prod(sets), g):
        core = _rstd_inner_spread(spec, g, xh, rstd, safe_count, kept, sets)
        t = core if scale is None else scale * core
    else:
        if spec.center:
            sums = r.sum(xh * g, g)
            mean_gx, mean_g = (s / safe_count for s in sums)
            inner = g - mean_g - xh * mean_gx
        else:
            inner = g - xh * (r.sum(xh * g) / safe_count)
        t = rstd * inner if scale is None else (rstd * scale) * inner
    if scale_dot is not None:
        # Split, not unit axes: this sum runs over the leading axes.
        t = t + unview(xhat("split") * split_view(scale_dot, g), g.shape)
    if bias_dot is not None:
        t = t + bias_dot
    return t


def _rstd_inner_spread(spec, g, xh, rstd, safe_count, kept, sets):
    """``rstd·(ẋ − E[ẋ] − x̂·E[x̂·ẋ])`` with every per-set factor on a full-size operand.

    Written ``rstd·ẋ + (x̂·k)·Σẋx̂ + k·Σẋ`` with ``k = −rstd/n`` spread to
    full size first, so that in the transpose each per-set sum goes straight
    to the broadcast that uses it, with no elementwise op on the sums in
    between. For fewer than 4096 sets XLA:CPU would end its fused kernel at
    such an op and store ``x̂`` and ``γ·rstd·g`` (:func:`jaxnorm._views.few_sets`);
    this way the sums and ``dx`` stay one kernel.

    Args:
      kept: the axes not reduced over; ``sets``: their sizes.
    """
    def spread(t):  # per set (keepdims shape) -> full size, without unit axes in between
        return lax.broadcast_in_dim(jnp.reshape(t, sets), g.shape, kept)

    def summed(t):
        return lax.broadcast_in_dim(jnp.sum(t, spec.reduction.axes), g.shape, kept)

    k = spread(-rstd / safe_count)
    out = spread(rstd) * g + (xh * k) * summed(xh * g)
    return out + k * summed(g) if spec.center else out


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
