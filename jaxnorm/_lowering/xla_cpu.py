"""XLA:CPU steering: the arrangements only the CPU lowering uses.

Everything here takes effect only while the CPU program of a piece is traced
(:func:`jaxnorm._lowering.per_platform.target` is ``"cpu"``); the accelerator program,
which XLA:GPU and XLA:TPU compile, reads the core math without it.

What XLA:CPU (jax 0.10) needs, and why:

- **The textbook/shifted switch** (:func:`on_conditioning`). XLA:CPU sums
  ``x`` and ``x²`` at memory speed (YNNPACK), but fuses any other
  elementwise work into a reduction at about half that speed, so the exact
  moments about a shift cost more here than on an accelerator. Where every
  set is well conditioned (``mean² <= 4·var``) the textbook moments are as
  exact as the shifted ones (output error at most about 2.5e-7), and a
  ``lax.cond`` takes them; otherwise the exact shifted moments
  (:func:`shifted_moments`, two reads). A data-dependent conditional is
  cheap on the CPU; on a GPU it is a host round-trip, so it exists only here.
- **Views** (:func:`view`, :func:`split_view`, :func:`unview`). When two
  fusions use the same full-size value (a broadcast of per-set statistics, a
  recomputed ``x − shift``), XLA:CPU stores it in between: a full write and
  read of the input's size. Computing each fusion's operand in its own view
  (the same data with extra leading unit axes, or one axis split in two)
  makes those values distinct, so each fusion recomputes what it needs from
  ``x``. The core marks such operands with ``view(t, k, like)``: the
  identity in every other program.
- **Few sets** (:func:`few_sets`). XLA:CPU hands a fused kernel to YNNPACK
  only where each elementwise op touches at least :data:`YNN_MIN_ELEMENTS`
  elements (``kMinElements`` in XLA's ``backends/cpu/ynn_support.cc``);
  with fewer sets, elementwise work on per-set sums between a reduction and
  its broadcast cuts the kernel, and callers apply such factors at full
  size instead.

``benchmarks/bench_norms.py`` measures what these buy on the CPU;
``benchmarks/studies/xla_passes.py`` lists the fused kernels they lead to.

Uses: jaxnorm._core (reduction), jaxnorm._lowering (per_platform).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jaxnorm._core.reduction import Moments, Reduction, explicitly_sharded_axes, inverse_std
from jaxnorm._lowering.per_platform import CPU, target

__all__ = [
    "WELL_CONDITIONED", "YNN_MIN_ELEMENTS", "conditioned_forward", "few_sets", "local_moments",
    "normalize_tangent", "on_conditioning",
    "shifted_moments", "split_view", "unview", "view",
]

# XLA:CPU hands a fused kernel to YNNPACK only where each elementwise op
# touches at least this many elements (kMinElements in XLA's
# backends/cpu/ynn_support.cc, jax 0.10).
YNN_MIN_ELEMENTS = 4096

# The textbook moments are used when every set has mean² <= WELL_CONDITIONED · var.
WELL_CONDITIONED = 4.0


def _steering(like) -> bool:
    """Whether the CPU program is being traced and ``like`` may be reshaped (not explicitly sharded)."""
    return target() == CPU and not any(s is not None for s in explicitly_sharded_axes(like))


def view(t, k: int, like):
    """``t`` (same rank as the array ``like``, broadcastable to it) with ``k`` leading unit axes.

    ``k = 0``, any program but the CPU one, and a ``like`` with explicit
    sharding in its type give ``t`` itself.
    """
    if k == 0 or not _steering(like):
        return t
    return jnp.reshape(t, (1,) * k + tuple(jnp.shape(t)))


def split_view(t, like):
    """``t`` with ``like``'s first even axis but the last split in two, ``(2, n/2)``.

    Distinct from every :func:`view`. Where XLA:CPU reduces over the leading
    axes of a unit-axes view it is slow; this view avoids that. Without such
    an axis, three leading unit axes instead. The identity outside the CPU
    program.
    """
    if not _steering(like):
        return t
    shape = tuple(jnp.shape(like))
    for ax, n in enumerate(shape[:-1]):
        if n % 2 == 0:
            size = jnp.shape(t)[ax]
            parts = (2, n // 2) if size == n else (1, 1)
            return jnp.reshape(t, jnp.shape(t)[:ax] + parts + jnp.shape(t)[ax + 1 :])
    return view(t, 3, like)


def unview(t, shape):
    """Undo a view: ``t`` back in ``shape`` (the viewed array's original shape)."""
    return t if jnp.shape(t) == tuple(shape) else jnp.reshape(t, shape)


def few_sets(num_sets: int, like) -> bool:
    """Whether XLA:CPU would cut a fused kernel at elementwise work on ``num_sets`` per-set values.

    With fewer than :data:`YNN_MIN_ELEMENTS` sets, an op on the per-set sums
    (``/n``, ``·rstd``) between a reduction and the broadcast that consumes
    it ends the YNNPACK kernel there, and XLA stores full-size intermediates
    instead. Callers then apply such factors to full-size operands. False
    outside the CPU program and for explicitly sharded ``like``.
    """
    return _steering(like) and num_sets < YNN_MIN_ELEMENTS


def local_moments(reduction: Reduction, shifted: bool, x, where) -> Moments:
    """The CPU program's moments of each set on this member (``x`` in the compute dtype).

    Without a mask: the textbook moments where every set is well conditioned,
    the exact shifted ones otherwise (:func:`on_conditioning`). With a mask
    (``x``'s rank, each axis ``x``'s size or 1), or unshifted (measurement):
    :func:`shifted_moments`.
    """
    mask = None if where is None else jnp.broadcast_to(where, x.shape)
    if mask is None:
        count = jnp.asarray(reduction.size(x.shape), x.dtype)
    else:
        count = reduction.local_sum(mask.astype(x.dtype))
    if mask is None and shifted:
        def textbook(mean, var):
            # The mean as the shift (x − shift is then x − mean), and
            # mean_shifted = mean − shift: 0 in value, but with the mean's
            # derivative, which second-order differentiation needs.
            shift = lax.stop_gradient(mean)
            return Moments(shift, mean - shift, var, count)

        return on_conditioning(x, reduction, count, textbook, lambda mo: mo)
    return shifted_moments(x, reduction, count, mask, shifted, where)


def conditioned_forward(x, reduction: Reduction, count, epsilon: float, scale, bias, affine):
    """The CPU program's normalization forward, its output computed inside the conditioning branch.

    The textbook branch computes ``y = (x − μ)·(rstd·γ) + β`` from ``E[x]``
    and ``E[x²]``: the kernels flax.linen's forward runs. The exact branch
    gives ``affine(moments, rstd·γ)``. Computing ``y`` after the
    ``lax.cond`` instead would give XLA:CPU a selection of two sets of
    statistics to broadcast, and it then adds layout copies and a
    subtraction per entry.

    Args:
      x: input in the compute dtype, no mask; ``count``: entries per set.
      reduction: this member's sets; ``epsilon``: added to the variance.
      scale, bias: None or arrays broadcastable to ``x``.
      affine: ``(Moments, a) -> y``, the output from the shifted moments.

    Returns:
      ``(y, shift, mean_shifted, var)`` in the compute dtype.
    """
    def coefficient(var):
        rstd = inverse_std(var, epsilon)
        return rstd if scale is None else rstd * scale

    def textbook(mean, var):
        y = (x - mean) * coefficient(var)
        y = y if bias is None else y + bias
        return y, mean, jnp.zeros_like(mean), var

    def shifted(mo):
        return affine(mo, coefficient(mo.var)), mo.shift, mo.mean_shifted, mo.var

    return on_conditioning(x, reduction, count, textbook, shifted)


def on_conditioning(x, reduction: Reduction, count, textbook, shifted):
    """``textbook(mean, var)`` if every set is well conditioned, else ``shifted(moments)``, under one ``lax.cond``.

    ``E[x]`` and ``E[x²]`` are the two reductions XLA:CPU runs fastest, but
    ``var = E[x²] − E[x]²`` loses digits as ``mean² / var`` grows: the
    output's relative error is about 5e-8 · (1 + mean²/var). They are kept
    when every set of this member has ``mean² <= 4 · var`` (error at most
    about 2.5e-7); otherwise, under ``lax.cond`` so that only one branch
    runs, the exact shifted moments (:func:`shifted_moments`). Under
    ``vmap`` the condition is per example and both branches are computed.

    Both branches may go on to use the statistics (a forward pass computes
    its output inside them), so that XLA sees one set of statistics per
    branch rather than a selection of two.

    Args:
      x: input in the compute dtype, no mask.
      reduction: the sets (this member's; no collective is taken here).
      count: entries per set.
      textbook: ``(mean, var) -> outputs``, given the textbook moments.
      shifted: ``(Moments) -> outputs``, given the shifted moments; the same
        output structure.
    """
    safe_count = jnp.maximum(count, 1)
    total, keep = _flat_sums(reduction, x.shape)
    sums = total(x), total(x * x)

    def mean_var():
        # From the sums on each side of the cond, so that XLA fuses the
        # division into the kernels that use them rather than storing it.
        mean = sums[0] / safe_count
        return mean, sums[1] / safe_count - mean * mean

    mean, var = mean_var()
    # One float reduction (a max) compiles to fewer kernels than jnp.all over
    # booleans. A NaN set gives NaN statistics whichever branch runs.
    excess = jnp.max(mean * mean - WELL_CONDITIONED * var, initial=-jnp.inf)
    return lax.cond(
        excess <= 0,
        lambda: textbook(*map(keep, mean_var())),
        lambda: shifted(shifted_moments(x, reduction, count, None, True)),
    )


def _flat_sums(reduction: Reduction, shape):
    """``(total, keep)``: per-set sums, and the way to :meth:`Reduction.local_sum`'s keepdims shape.

    Without groups, ``total`` sums without keepdims axes and ``keep``
    reshapes: statistics kept flat until they are used compile to fewer
    kernels on XLA:CPU (keepdims ones used on both sides of a ``lax.cond``
    get layout copies). With groups both are :meth:`Reduction.local_sum`'s:
    summing the spatial axes first and the group's channels after is many
    times faster there than one reduction over ``(H, W, C/G)`` (flax.linen's
    form: 8×64×64×64 forward 9 ms against 1 ms).
    """
    if reduction.group_axis is not None:
        return reduction.local_sum, lambda t: t
    out = tuple(1 if a in reduction.axes else n for a, n in enumerate(shape))
    return (lambda t: jnp.sum(t, reduction.axes)), (lambda t: jnp.reshape(t, out))


def shifted_moments(x, reduction: Reduction, count, mask, shifted: bool, where=None) -> Moments:
    """``m = E[x − shift]``, ``var = E[((x − shift) − m)²]`` on this member, in two reads.

    The shift is each set's first entry, or with a mask its first selected
    one (found from the mask alone, :meth:`Reduction.first_selected`); zero
    when ``shifted`` is False. An entry of ``x`` itself, never a computed
    value: XLA:CPU may contract a computed shift into each use differently
    (a multiply-add in one kernel, a rounded product in another), and
    ``x − shift`` is then not the same value in the mean and in the output
    (at mean 1e4, errors of 1e-3). ``mask``: None, or the selection broadcast
    to ``x``'s shape; ``where``: the mask as given (size-1 axes kept).
    """
    safe_count = jnp.maximum(count, 1)
    if not shifted:
        shift = jnp.zeros(reduction.kept_shape(x.shape), x.dtype)
    elif mask is None:
        shift = reduction.first(x)
    else:
        shift = reduction.first_selected(x, mask if where is None else where)[0]
    shift = lax.stop_gradient(shift)

    def centred(k, mean_shifted=None):
        """``(x − shift) [− mean_shifted]`` in view ``k``, 0 where masked."""
        d = view(x, k, x) - view(shift, k, x)
        if mean_shifted is not None:
            d = d - view(mean_shifted, k, x)
        return d if mask is None else jnp.where(view(mask, k, x), d, 0)

    # Over trailing axes (rows, as in LayerNorm) XLA:CPU fuses both passes
    # with their consumer into one pass over each row; otherwise each is
    # computed in its own view, so that XLA:CPU fuses it into its reduction
    # rather than storing x − shift.
    rows = reduction.group_axis is None and reduction.axes == tuple(
        range(x.ndim - len(reduction.axes), x.ndim)
    )
    first, second = (0, 0) if rows else (1, 2)
    mean_shifted = reduction.local_sum(unview(centred(first), x.shape)) / safe_count
    c = centred(second, mean_shifted)
    var = reduction.local_sum(unview(c * c, x.shape)) / safe_count
    return Moments(shift, mean_shifted, var, count)


def normalize_tangent(reduction: Reduction, center: bool, x, centre, rstd, count, scale, x_dot, scale_dot, bias_dot):
    """The CPU program's ẏ for :mod:`jaxnorm._core.normalize` (no mask), linear in ``(x_dot, scale_dot, bias_dot)``.

    The same math as the accelerator program's
    (``jaxnorm._core.normalize._tangent``), arranged for XLA:CPU: each pass's
    operands in a view of their own, the per-set factors spread to full size
    for few sets, and optimization barriers where XLA:CPU would merge sums.

    Args:
      reduction: the sets; ``center``: False for RMSNorm.
      x: input; ``centre``: ``(shift, mean_shifted)``; ``rstd``, ``count``: per set.
      scale: None or broadcastable to ``x``; the dots: tangents (None
        without the parameter).
    """
    spec = _Spec(reduction, center)
    xc = x.astype(rstd.dtype)
    a = rstd if scale is None else rstd * scale
    fine = _fine_axes(reduction, scale, bias_dot)  # bias_dot has bias's shape
    g = x_dot.astype(rstd.dtype)
    if fine:
        return _tangent_fine(spec, fine, g, xc, centre, rstd, a, count, scale_dot, bias_dot)
    xhat = functools.partial(_xhat, spec, xc, centre, rstd)
    return _tangent_full(spec, g, xhat, rstd, scale, count, scale_dot, bias_dot)


class _Spec(NamedTuple):
    reduction: Reduction
    center: bool


def _xhat(spec, xc, centre, rstd, k):
    """``x̂ = ((x − shift) − mean_shifted) · rstd`` (``x · rstd`` uncentered), in view ``k``.

    ``k = "split"`` is :func:`split_view`.
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
    such an op and store ``x̂`` and ``γ·rstd·g`` (:func:`few_sets`);
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
