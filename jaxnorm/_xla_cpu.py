"""XLA:CPU steering: the arrangements only the CPU lowering uses.

Everything here takes effect only while the CPU program of a piece is traced
(:func:`jaxnorm._lowering.target` is ``"cpu"``); the accelerator program,
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
Uses :mod:`jaxnorm._lowering` (the target) and :mod:`jaxnorm._reduction`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._lowering import CPU, target
from jaxnorm._reduction import Moments, Reduction, explicitly_sharded_axes

__all__ = [
    "WELL_CONDITIONED", "YNN_MIN_ELEMENTS", "conditioned_forward", "few_sets", "local_moments", "on_conditioning",
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


def local_moments(reduction: Reduction, shifted: bool, x, mask) -> Moments:
    """The CPU program's moments of each set on this member (``x`` in the compute dtype).

    Without a mask: the textbook moments where every set is well conditioned,
    the exact shifted ones otherwise (:func:`on_conditioning`). With a mask,
    or unshifted (measurement): :func:`shifted_moments`.
    """
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
    return shifted_moments(x, reduction, count, mask, shifted)


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
        rstd = lax.rsqrt(var + epsilon)
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


def shifted_moments(x, reduction: Reduction, count, mask, shifted: bool) -> Moments:
    """``m = E[x − shift]``, ``var = E[((x − shift) − m)²]`` on this member, in two reads.

    The shift is each set's first entry (the masked mean with a mask, one
    more read; zero when ``shifted`` is False). ``mask``: None, or the
    selection broadcast to ``x``'s shape.
    """
    safe_count = jnp.maximum(count, 1)
    if not shifted:
        shift = jnp.zeros(reduction.first(x).shape, x.dtype)
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
