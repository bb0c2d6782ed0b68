"""The statistics core: exact moments over any reduction set, in one read of the data.

Every scheme in jaxnorm normalizes with the mean and variance of some set of
entries of its input: LayerNorm over the feature axes, InstanceNorm over the
spatial axes, GroupNorm over the spatial axes and a group of channels,
BatchNorm over everything but the channels. A :class:`Reduction` describes
that set; :func:`moments` computes its statistics.

Exactness in one pass. The textbook single pass ``var = E[x²] − E[x]²``
cancels catastrophically when ``|mean| >> std`` (float32 at mean 1e4 loses
every digit). jaxnorm takes the moments of ``d = x − s``, where the *shift*
``s`` is a value of each set close to its mean (Chan, Golub & LeVeque 1983)::

    m = E[d],   var = E[d²] − m²,   mean = s + m.

``E[d]`` and ``E[d²]`` are sibling reductions of one elementwise function of
``x`` (``s`` comes from a handful of gathered entries, not from a reduction
of ``x``), so an accelerator computes both in one read of ``x``, as it does
flax's ``E[x]`` and ``E[x²]``. The shift is the median of a few samples of
each set (:meth:`Reduction.samples`: first, middle and last entry along each
summed axis), so ``m`` is of the order of the spread and the subtraction
``E[d²] − m²`` loses only a factor ``1 + m²/var`` of float32's precision;
``x − s`` is exact when ``x`` and ``s`` are close (Sterbenz). Normalized
values are formed as ``(x − s) − m``, never ``x − mean``, which keeps them
exact even at a mean of 1e6 in float32. Worst case: a set whose samples
are mostly far outliers (k standard deviations from the mean) loses a
factor ``1 + k²``; with a mask, a set whose samples are all masked falls
back to ``s = 0`` (the textbook moments). The shift carries no gradient:
the statistics do not depend on it, so derivatives of every order are
unchanged.

On the CPU the moments are computed differently (:mod:`jaxnorm._lowering.xla_cpu`,
traced only into the CPU program through :mod:`jaxnorm._lowering.per_platform`).

Masks select (``jnp.where``), never multiply, so masked entries holding NaN or
Inf never reach a statistic. Statistics are accumulated in at least float32
(:func:`compute_dtype`).

Across devices (``axis_name``, the BatchNorm family). Each member of the named
axis computes its local moments ``(n_i, s_i, m_i, M2_i)`` (count, shift,
shifted mean, centred sum of squares); one ``all_gather`` brings all of them
to every member, which combines them exactly (Chan, Golub & LeVeque 1979)
around a common reference shift ``s_r`` (the shift of the member holding the
most entries)::

    e_i = (s_i − s_r) + m_i,   n = Σ n_i,   m = Σ n_i e_i / n,
    var = Σ (M2_i + n_i (e_i − m)²) / n.

Every term is of the order of the spread, so exactness survives the trip,
and it costs one collective, not one per moment. Under ``vmap`` the gathered
statistics are the same for every member, so the combination runs once.
The same merge pools sets within one array (:func:`pool_moments`): the
LayerNorm and BatchNorm statistics of Switchable Normalization, EvoNorm-B0
and Representative BatchNorm come from one pass of InstanceNorm moments.

Uses: jaxnorm._core (collectives, reduction, remat), jaxnorm._lowering
(per_platform, xla_cpu).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core.collectives import all_gather
from jaxnorm._core.reduction import Moments, Reduction, compute_dtype, take_along
from jaxnorm._core.remat import statistic
from jaxnorm._lowering import xla_cpu
from jaxnorm._lowering.per_platform import lower_per_platform
from jaxnorm._lowering.xla_cpu import unview, view

__all__ = [
    "Moments", "Reduction", "compute_dtype", "moments", "one_pass_moments", "pool_moments", "pool_sets",
    "sample_shift", "shifted_default", "tangent_sums", "unshifted_statistics",
]

_SHIFTED = contextvars.ContextVar("jaxnorm_shifted_statistics", default=True)


def shifted_default() -> bool:
    """Whether statistics built now are shifted (True unless inside :func:`unshifted_statistics`)."""
    return _SHIFTED.get()


@contextlib.contextmanager
def unshifted_statistics():
    """Measurement only: normalizations traced inside take moments of ``x`` itself.

    Without the shift the moments are the textbook two-pass ``E[x]``,
    ``E[(x − E[x])²]``, which lose digits when ``|mean| >> std``. It exists so
    that ``benchmarks/bench_norms.py`` can time what exactness costs, in the
    same run; no public function exposes it. The choice is read when a
    normalization is traced (it becomes part of its static settings), so a
    function jitted inside the context keeps it; ``jax.jit`` caches by
    function, so give each mode a function object of its own.
    """
    token = _SHIFTED.set(False)
    try:
        yield
    finally:
        _SHIFTED.reset(token)


def moments(
    x: jax.Array,
    reduction: Reduction,
    *,
    where: jax.Array | None = None,
    center: bool = True,
    shifted: bool = True,
) -> Moments:
    """Exact mean and biased variance of each reduction set of ``x``.

    ``m = E[x − shift]``, ``var = E[(x − shift)²] − m²`` in one read of ``x``
    (:func:`one_pass_moments`; the CPU program computes them as
    :func:`jaxnorm._lowering.xla_cpu.local_moments` does); with ``center=False`` the
    second moment ``E[x²]`` (RMSNorm) instead. With ``reduction.axis_name``
    the sets extend across that named axis, combined with a single
    ``all_gather`` (see module doc).

    Args:
      x: floating input; statistics are computed in ``compute_dtype(x.dtype)``.
      reduction: the sets of entries that share statistics.
      where: optional boolean mask broadcastable to ``x``; False entries are
        left out (selected away, so NaN/Inf there is harmless). A set with no
        selected entry gets zero statistics.
      center: subtract the mean (True) or not (False, RMSNorm).
      shifted: take the moments of ``x − shift`` (exact; the default) or of
        ``x`` itself (``shift = 0``; see :func:`unshifted_statistics`).

    Returns:
      :class:`Moments` with keepdims shapes, named as statistics (inside
      :func:`jaxnorm._core.remat.keep_statistics` reverse mode keeps them).
    """
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype)
    if where is not None:
        where = jnp.reshape(where, (1,) * (x.ndim - jnp.ndim(where)) + jnp.shape(where))
    mask = None if where is None else jnp.broadcast_to(where, x.shape)
    if not center:
        if reduction.axis_name is not None:
            raise NotImplementedError("moments: uncentered statistics across axis_name")
        count = _count(reduction, x, mask)
        second = reduction.local_sum(x * x if mask is None else jnp.where(mask, x * x, 0))
        zero = jnp.zeros((), dtype)
        return _named(Moments(zero, zero, second / jnp.maximum(count, 1), count))
    local = reduction.local()
    mo = lower_per_platform(
        x, where,
        cpu=functools.partial(xla_cpu.local_moments, local, shifted),
        accelerator=functools.partial(one_pass_moments, local, shifted),
    )
    if reduction.axis_name is not None:
        return _named(_combine_members(mo, reduction))
    return _named(mo)


def _named(mo: Moments) -> Moments:
    """The moments, marked as statistics that reverse mode keeps (:mod:`jaxnorm._core.remat`)."""
    return Moments(*(statistic(t) for t in mo))


def _median(values, valid):
    """The median of the valid ``values`` (lower median for an even count), elementwise over sets.

    Each value's rank among the valid ones (ties broken by position) is
    counted with comparisons of whole arrays, so the median costs a few
    elementwise operations per set and fuses (no sort). ``valid``: None
    entries mean always valid.
    """
    k = len(values)
    ok = [jnp.ones(values[0].shape, bool) if v is None else v for v in valid]
    n = sum(o.astype(jnp.int32) for o in ok)
    middle = jnp.maximum(n - 1, 0) // 2
    out = jnp.zeros_like(values[0])
    for i in range(k):
        rank = sum(
            (ok[j] & ((values[j] < values[i]) | ((values[j] == values[i]) & (j < i)))).astype(jnp.int32)
            for j in range(k) if j != i
        ) if k > 1 else jnp.zeros(values[0].shape, jnp.int32)
        out = jnp.where(ok[i] & (rank == middle), values[i], out)
    return out


def _count(reduction: Reduction, x, mask):
    """Entries in each set of this member (float; keepdims shape with a mask, scalar without)."""
    if mask is None:
        return jnp.asarray(reduction.size(x.shape), x.dtype)
    return reduction.local_sum(mask.astype(x.dtype))


def one_pass_moments(reduction: Reduction, shifted: bool, x, where) -> Moments:
    """Moments about a sampled shift, in one read of ``x`` (the accelerator program).

    ``d = x − s`` with ``s`` = :func:`sample_shift` (0 when ``shifted`` is
    False); ``Σd``, ``Σd²`` (and the count, with a mask) are sibling
    reductions of elementwise functions of ``x``, so XLA fuses them into one
    pass. ``var = max(Σd²/n − (Σd/n)², 0)``.

    Args:
      reduction: this member's sets (no named axis).
      shifted: False only for measurement (:func:`unshifted_statistics`).
      x: input in the compute dtype.
      where: None, or the mask (``x``'s rank, each axis ``x``'s size or 1).
    """
    count = _count(reduction, x, None if where is None else jnp.broadcast_to(where, x.shape))
    safe_count = jnp.maximum(count, 1)
    if shifted:
        shift = sample_shift(x, reduction, where)
    else:
        shift = jnp.zeros(reduction.kept_shape(x.shape), x.dtype)
    d = x - shift
    if where is not None:
        d = jnp.where(where, d, 0)
    total, squares = reduction.local_sum(d), reduction.local_sum(d * d)
    mean_shifted = total / safe_count
    var = jnp.maximum(squares / safe_count - mean_shifted * mean_shifted, 0)
    return Moments(shift, mean_shifted, var, count)


def sample_shift(x, reduction: Reduction, where=None):
    """Each set's shift: the median of its selected samples (:meth:`Reduction.samples`), no gradient.

    A few gathered entries, not a pass over ``x``. The median of samples
    spread over the set is within a few standard deviations of its mean
    unless most samples are outliers. A set whose samples are all masked
    takes its first selected entry instead (:meth:`Reduction.first_selected`,
    found from the mask alone), and a set with none, 0.

    Args:
      x: input in the compute dtype.
      reduction: this member's sets.
      where: None, or the mask (``x``'s rank, each axis ``x``'s size or 1).

    Returns:
      The shift with the statistics' keepdims shape.
    """
    x = lax.stop_gradient(x)
    values, selected = reduction.samples(x, where)
    samples = [values[..., i] for i in range(values.shape[-1])]
    channels = None if reduction.group_axis is None else x.shape[reduction.group_axis]
    if selected is None:
        shift = reduction.spread_groups(_median(samples, [None] * len(samples)), channels)
    else:
        valid = [selected[..., i] for i in range(selected.shape[-1])]
        median = reduction.spread_groups(_median(samples, valid), channels)
        any_valid = reduction.spread_groups(functools.reduce(jnp.logical_or, valid), channels)
        first, _ = reduction.first_selected(x, where)
        shift = jnp.where(any_valid, median, first)
    return lax.stop_gradient(shift.astype(x.dtype))


def _combine_members(local: Moments, reduction: Reduction) -> Moments:
    """Pool every member's moments across ``reduction.axis_name``, exactly.

    One ``all_gather`` of the stacked local ``(n, s, m, n·var)``; the pooled
    moments are expressed around the shift of the member with most entries
    (see module doc).
    """
    n, s, m, var = jnp.broadcast_arrays(local.count, local.shift, local.mean_shifted, local.var)
    gathered = all_gather(
        jnp.stack([n, s, m, n * var]), reduction.axis_name, reduction.axis_index_groups
    )
    n_i, s_i, m_i, m2_i = (gathered[:, k] for k in range(4))
    ref = jnp.argmax(n_i, axis=0)[None]
    s_ref = jnp.take_along_axis(s_i, ref, axis=0)
    return _chan(n_i, s_i, m_i, m2_i, s_ref, (0,), keepdims=False)


def tangent_sums(x: jax.Array, x_dot: jax.Array, shift: jax.Array, reduction: Reduction):
    """``A = Σ ẋ`` and ``B = Σ (x − shift)·ẋ`` over each set of ``reduction``.

    The moments' tangents follow: ``μ̇ = A/n`` and ``σ̇²/2 = (B − (μ − shift)·A)/n``,
    exact at large means. For the closed-form derivatives built on a set's
    moments (EvoNorm, RBN, SwitchNorm). In the CPU program both sums are
    formed on ẋ's side in view 1 (:func:`jaxnorm._lowering.xla_cpu.view`), so that in
    reverse mode their transposes join the ``dx`` pass rather than have
    XLA:CPU store ``x − shift``. Across ``reduction.axis_name`` one ``psum``.
    """
    local = lower_per_platform(
        x, x_dot, shift,
        cpu=functools.partial(_local_tangent_sums, reduction.local()),
        accelerator=functools.partial(_local_tangent_sums, reduction.local()),
    )
    if reduction.axis_name is None:
        return local
    return tuple(lax.psum(jnp.stack(local), reduction.axis_name, axis_index_groups=reduction.axis_index_groups))


def _local_tangent_sums(reduction: Reduction, x, x_dot, shift):
    g1 = view(x_dot, 1, x)
    centred1 = view(x, 1, x) - view(shift, 1, x)
    return reduction.local_sum(unview(g1, x.shape)), reduction.local_sum(unview(centred1 * g1, x.shape))


def pool_sets(mo: Moments, reduction: Reduction) -> Moments:
    """The moments of the unions of ``mo``'s sets along ``reduction.axes`` and across its ``axis_name``.

    :func:`pool_moments` over the axes, then one ``all_gather`` across the
    named axis (as :func:`moments` does for its own sets); exact throughout.
    For example, BatchNorm's moments from InstanceNorm's, pooled over the
    batch axis and the devices.
    """
    if reduction.axes:
        mo = pool_moments(mo, reduction.axes)
    if reduction.axis_name is not None:
        mo = _named(_combine_members(mo, reduction))
    return mo


def pool_moments(mo: Moments, axes: tuple[int, ...]) -> Moments:
    """The moments of the union of the sets of ``mo`` along ``axes``, exactly.

    ``mo`` holds one set per entry (keepdims shapes, as :func:`moments`
    returns); the sets that differ only along ``axes`` are merged (Chan,
    Golub & LeVeque 1979) around a common shift, the first set's::

        e_i = (s_i − s_ref) + m_i,   n = Σ n_i,   m = Σ n_i e_i / n,
        var = Σ n_i (var_i + (e_i − m)²) / n.

    Every term is of the order of the spread, so nothing cancels. For
    example, LayerNorm's moments are the InstanceNorm moments pooled over the
    channel axis. Derivatives flow through ``mean_shifted`` and ``var``.

    Args:
      mo: moments with keepdims shapes (count may be a scalar).
      axes: the axes to pool over (size 1 in the result).

    Returns:
      :class:`Moments` with size 1 along ``axes``, named as statistics.
    """
    n, s, m, var = jnp.broadcast_arrays(mo.count, mo.shift, mo.mean_shifted, mo.var)
    s_ref = s
    for ax in axes:
        s_ref = take_along(s_ref, ax, 0)
    return _named(_chan(n, s, m, n * var, lax.stop_gradient(s_ref), axes, keepdims=True))


def _chan(n_i, s_i, m_i, m2_i, s_ref, axes, *, keepdims: bool) -> Moments:
    """Merge sets ``(n_i, s_i, m_i, M2_i = n_i·var_i)`` along ``axes`` around ``s_ref``."""
    e_i = (s_i - s_ref) + m_i
    count = jnp.sum(n_i, axis=axes, keepdims=keepdims)
    safe_count = jnp.maximum(count, 1)
    mean_shifted = jnp.sum(n_i * e_i, axis=axes, keepdims=keepdims) / safe_count
    dev = e_i - (mean_shifted if keepdims else jnp.expand_dims(mean_shifted, axes))
    var = jnp.sum(m2_i + n_i * dev * dev, axis=axes, keepdims=keepdims) / safe_count
    shift = lax.stop_gradient(s_ref if keepdims else jnp.squeeze(s_ref, axes))
    return Moments(shift, mean_shifted, var, count)
