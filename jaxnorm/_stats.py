"""The statistics core: exact moments over any reduction set.

Every scheme in jaxnorm normalizes with the mean and variance of some set of
entries of its input: LayerNorm over the feature axes, InstanceNorm over the
spatial axes, GroupNorm over the spatial axes and a group of channels, and
(later) BatchNorm over everything but the channels. A :class:`Reduction`
describes that set; :func:`moments` computes its statistics.

Exactness. The textbook single pass ``var = E[x²] − E[x]²`` cancels
catastrophically when ``|mean| >> std`` (float32 at mean 1e4 loses every
digit). jaxnorm takes the moments of ``d = x − s``, where the *shift* ``s``
is one sample of each reduction set (Chan, Golub & LeVeque 1983), in two
reads of the data::

    m = E[x − s],    var = E[((x − s) − m)²],    mean = s + m.

``s`` lies within a few standard deviations of the mean, so ``m`` is of the
order of the spread; ``x − s`` is exact in floating point when ``x`` and
``s`` are close (Sterbenz). On XLA:CPU the second read measured about as
fast as a single pass that also sums ``d²`` (``benchmarks/bench_norms.py``),
and it needs no cancelling subtraction at all. Normalized
values are formed as ``(x − s) − m``, never ``x − mean``, which keeps them
exact even at a mean of 1e6 in float32. The shift carries no gradient: the
statistics do not depend on it, so derivatives of every order are unchanged.

Speed without giving that up. Where the textbook moments are accurate
(every set with ``mean² <= 4·var``: activations) they are used, because
XLA:CPU sums ``x`` and ``x²`` twice as fast as ``x − s``; a ``lax.cond``
switches to the shifted moments for inputs far from zero
(:func:`on_conditioning`).

Masks select (``jnp.where``), never multiply, so masked entries holding NaN or
Inf never reach a statistic. With a mask the shift is the masked mean (one
extra pass), because the first entry of a set may be masked.

Statistics are accumulated in at least float32 (:func:`compute_dtype`).

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
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxnorm._collectives import all_gather
from jaxnorm._remat import statistic
from jaxnorm._views import unview, view

__all__ = [
    "Moments", "Reduction", "compute_dtype", "moments", "on_conditioning", "pool_moments", "pool_sets",
    "shifted_default", "tangent_sums", "unshifted_statistics",
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


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype statistics are accumulated in: ``dtype`` promoted to >= float32."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Reduction:
    """Which entries of an array share one set of statistics.

    Entries that differ only along ``axes`` share statistics; so do entries
    whose index along ``group_axis`` falls in the same of ``num_groups``
    contiguous, equal groups. Statistics are returned with ``keepdims`` shapes
    (size 1 along ``axes``, full size along ``group_axis``, each channel
    holding its group's value), so they broadcast against the input.

    Attributes:
      axes: non-negative, sorted axes that are summed over (may be empty).
      group_axis: an axis not in ``axes`` whose entries are pooled in groups,
        or None.
      num_groups: number of groups along ``group_axis``.
    """

    axes: tuple[int, ...]
    group_axis: int | None = None
    num_groups: int = 1
    axis_name: object = None
    axis_index_groups: tuple | None = None

    def sum(self, *ts: jax.Array):
        """Sum each ``t`` over its reduction sets, across ``axis_name`` too.

        One array gives one sum; several give a tuple and cost a single
        collective (their local sums are stacked before the ``psum``).
        """
        local = [self.local_sum(t) for t in ts]
        if self.axis_name is not None:
            if len(local) == 1:
                local = [self._psum(local[0])]
            else:
                local = list(self._psum(jnp.stack(jnp.broadcast_arrays(*local))))
        return local[0] if len(ts) == 1 else tuple(local)

    def _psum(self, t):
        return lax.psum(t, self.axis_name, axis_index_groups=self.axis_index_groups)

    def local_sum(self, t: jax.Array) -> jax.Array:
        """Sum ``t`` over each reduction set on this member only (no collective)."""
        s = jnp.sum(t, self.axes, keepdims=True) if self.axes else t
        if self.group_axis is None:
            return s
        ax = self.group_axis
        shape = s.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        pooled = jnp.sum(s.reshape(split), ax + 1, keepdims=True)
        return jnp.broadcast_to(pooled, split).reshape(shape)

    def size(self, shape) -> int:
        """Number of local entries in each reduction set of an array of ``shape``."""
        n = math.prod(shape[a] for a in self.axes)
        if self.group_axis is not None:
            n *= shape[self.group_axis] // self.num_groups
        return n

    def first(self, x: jax.Array) -> jax.Array:
        """One entry of each reduction set (its first), keepdims shape.

        Sets with no entries (an axis of size 0) get 0.
        """
        if any(x.shape[a] == 0 for a in self.axes):
            shape = tuple(1 if a in self.axes else n for a, n in enumerate(x.shape))
            return jnp.zeros(shape, x.dtype)
        for a in self.axes:
            x = _first_along(x, a)
        if self.group_axis is None:
            return x
        ax = self.group_axis
        shape = x.shape
        split = shape[:ax] + (self.num_groups, shape[ax] // self.num_groups) + shape[ax + 1 :]
        head = lax.slice_in_dim(x.reshape(split), 0, 1, axis=ax + 1)
        return jnp.broadcast_to(head, split).reshape(shape)


def _first_along(x: jax.Array, axis: int) -> jax.Array:
    """``x``'s first entry along ``axis`` (keepdims), also for explicitly sharded axes.

    An axis sharded over D devices in the array's type (explicit sharding) cannot
    be sliced directly: it is split as (D, n/D), each shard's first entry kept,
    and that small (D, 1, ...) array made replicated before taking entry 0.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    names = spec[axis] if spec is not None and axis < len(spec) else None
    if names is None:
        return lax.slice_in_dim(x, 0, 1, axis=axis)
    names = names if isinstance(names, tuple) else (names,)
    shards = math.prod(sharding.mesh.shape[n] for n in names)
    shape = x.shape
    heads = x.reshape(shape[:axis] + (shards, shape[axis] // shards) + shape[axis + 1 :])
    heads = lax.slice_in_dim(heads, 0, 1, axis=axis + 1)
    spec = tuple(spec) + (None,) * (x.ndim - len(spec))
    replicated = PartitionSpec(*(spec[:axis] + (None, None) + spec[axis + 1 :]))
    heads = jax.sharding.reshard(heads, NamedSharding(sharding.mesh, replicated))
    return lax.slice_in_dim(heads, 0, 1, axis=axis).reshape(shape[:axis] + (1,) + shape[axis + 1 :])


class Moments(NamedTuple):
    """Statistics of each reduction set, keepdims shapes, compute dtype.

    The mean is split as ``shift + mean_shifted`` so that ``x − mean`` can be
    formed exactly as ``(x − shift) − mean_shifted``.

    Attributes:
      shift: a value close to the mean (no gradient); zero when uncentered.
      mean_shifted: ``E[x − shift]``; zero when uncentered.
      var: ``E[(x − mean)²]`` (biased), or ``E[x²]`` when uncentered.
      count: entries in each set (float), after masking; may be 0.
    """

    shift: jax.Array
    mean_shifted: jax.Array
    var: jax.Array
    count: jax.Array

    @property
    def mean(self) -> jax.Array:
        """The mean itself, ``shift + mean_shifted`` (rounded once)."""
        return self.shift + self.mean_shifted


def moments(
    x: jax.Array,
    reduction: Reduction,
    *,
    where: jax.Array | None = None,
    center: bool = True,
    shifted: bool = True,
) -> Moments:
    """Exact mean and biased variance of each reduction set of ``x``.

    ``m = E[x − shift]``, ``var = E[((x − shift) − m)²]`` (see module doc),
    or, without a mask and where every set is well conditioned, the textbook
    ``E[x]``, ``E[x²] − E[x]²`` (:func:`_conditioned_moments`); with
    ``center=False`` the second moment ``E[x²]`` (RMSNorm) instead. With
    ``reduction.axis_name`` the sets extend across that named axis, combined
    with a single ``all_gather`` (see module doc).

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
      :func:`jaxnorm._remat.keep_statistics` reverse mode keeps them).
    """
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype)
    if where is None:
        mask = None
        count = jnp.asarray(reduction.size(x.shape), dtype)
        select = lambda t: t
    else:
        mask = jnp.broadcast_to(where, x.shape)
        count = reduction.local_sum(mask.astype(dtype))
        select = lambda t: jnp.where(mask, t, 0)
    safe_count = jnp.maximum(count, 1)

    if not center:
        zero = jnp.zeros((), dtype)
        if reduction.axis_name is not None:
            raise NotImplementedError("moments: uncentered statistics across axis_name")
        second = reduction.local_sum(select(x * x))
        return _named(Moments(zero, zero, second / safe_count, count))

    if where is None and shifted:
        local = _conditioned_moments(x, reduction, count)
    else:
        local = _shifted_moments(x, reduction, count, safe_count, mask, shifted)
    if reduction.axis_name is not None:
        return _named(_combine_members(local, reduction))
    return _named(local)


def _named(mo: Moments) -> Moments:
    """The moments, marked as statistics that reverse mode keeps (:mod:`jaxnorm._remat`)."""
    return Moments(*(statistic(t) for t in mo))


# The textbook moments are used when every set has mean² <= WELL_CONDITIONED · var.
WELL_CONDITIONED = 4.0


def _conditioned_moments(x, reduction: Reduction, count) -> Moments:
    """Textbook moments where they are accurate, the exact shifted ones elsewhere.

    :func:`on_conditioning` with the textbook branch giving the mean as the
    shift (``x − shift`` is then ``x − mean``, as in the textbook) and
    ``mean_shifted = mean − shift``: 0 in value but with the mean's
    derivative, which second-order differentiation needs.
    """
    def textbook(mean, var):
        shift = lax.stop_gradient(mean)
        return Moments(shift, mean - shift, var, count)

    return on_conditioning(x, reduction, count, textbook, lambda mo: mo)


def on_conditioning(x, reduction: Reduction, count, textbook, shifted):
    """``textbook(mean, var)`` if every set is well conditioned, else ``shifted(moments)``, under one ``lax.cond``.

    ``E[x]`` and ``E[x²]`` are the two reductions XLA:CPU runs fastest (its
    YNNPACK kernels sum and sum squares at memory speed; any other
    elementwise work fused into a reduction, such as ``x − shift``, halves
    their speed), but ``var = E[x²] − E[x]²`` loses digits as ``mean² / var``
    grows: the output's relative error is about 5e-8 · (1 + mean²/var). They
    are kept when every set of this member has ``mean² <= 4 · var`` (error
    at most about 2.5e-7; 1.2e-7 at mean 1 with unit spread, where the
    shifted moments give 6e-8: ``benchmarks/exactness.py``); otherwise,
    under ``lax.cond`` so that only one branch runs, the exact shifted
    moments (:func:`_shifted_moments`) are taken. Activations (zero-mean, or
    post-ReLU with mean/std about 1.4) take the fast branch; inputs far from
    zero, the exact one. Under ``vmap`` the condition is per example and
    both branches are computed.

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
        lambda: shifted(_shifted_moments(x, reduction, count, safe_count, None, True)),
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


def _shifted_moments(x, reduction: Reduction, count, safe_count, mask, shifted: bool) -> Moments:
    """``m = E[x − shift]``, ``var = E[((x − shift) − m)²]`` on this member (module doc).

    ``mask``: None, or the selection broadcast to ``x``'s shape.
    """
    dtype = x.dtype
    if not shifted:
        shift = jnp.zeros(reduction.first(x).shape, dtype)
    elif mask is None:
        shift = reduction.first(x)
    else:
        shift = reduction.local_sum(jnp.where(mask, x, 0)) / safe_count
    shift = lax.stop_gradient(shift)

    def centred(k, mean_shifted=None):
        """``(x − shift) [− mean_shifted]`` in view ``k``, 0 where masked."""
        d = view(x, k, x) - view(shift, k, x)
        if mean_shifted is not None:
            d = d - view(mean_shifted, k, x)
        return d if mask is None else jnp.where(view(mask, k, x), d, 0)

    # Two passes. Over trailing axes (rows, as in LayerNorm) XLA:CPU fuses
    # both with their consumer into one pass over each row; otherwise each
    # is computed in its own view, so that XLA:CPU fuses it into its
    # reduction rather than storing x − shift (see jaxnorm._views).
    rows = reduction.group_axis is None and reduction.axes == tuple(
        range(x.ndim - len(reduction.axes), x.ndim)
    )
    first, second = (0, 0) if rows else (1, 2)
    mean_shifted = reduction.local_sum(unview(centred(first), x.shape)) / safe_count
    c = centred(second, mean_shifted)
    var = reduction.local_sum(unview(c * c, x.shape)) / safe_count
    return Moments(shift, mean_shifted, var, count)


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
    exact at large means. Both sums are formed on ẋ's side, in view 1
    (:mod:`jaxnorm._views`), so that in reverse mode their transposes join
    the ``dx`` pass rather than have XLA store ``x − shift``. For the
    closed-form derivatives built on a set's moments (EvoNorm, RBN,
    SwitchNorm).
    """
    g1 = view(x_dot, 1, x)
    centred1 = view(x, 1, x) - view(shift, 1, x)
    return reduction.sum(unview(g1, x.shape), unview(centred1 * g1, x.shape))


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
        s_ref = _first_along(s_ref, ax)
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
