"""Hypothesis strategies, switches and tolerances of the differential fuzz suite.

See ``tests/fuzz/test_fuzz_functions.py`` for the suite's design. This module holds
what the function and module suites share:

* the **switches** for behaviour that is not in jaxnorm yet (flip one when its
  issue lands, and the suite starts generating those cases);
* the **profiles**: ``ci`` (the default, derandomized, bounded compilations)
  and ``long`` (``HYPOTHESIS_PROFILE=long``, run by hand), registered in
  ``tests/conftest.py``;
* **static configurations**: everything that changes what XLA compiles
  (shapes, axes, dtypes, settings) is drawn by a generator written against a
  small :class:`Chooser` interface. Under ``long`` hypothesis draws it
  directly (so it shrinks); under ``ci`` it is one hand-picked configuration
  per scheme (``Scheme.ci``; four for the modules), so that each is compiled
  once and the examples vary the data;
* **data**: means, spreads, seeds, mask patterns, all drawn by hypothesis in
  both profiles (they never cause a recompilation);
* the **tolerance** (:func:`tolerance`): derived from the dtypes' unit
  roundoffs and each oracle's error model (``tests/fuzz_reference.py``).
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# ---------------------------------------------------------------- switches
# Each switch names a finding (or an issue) whose cases the suite generates.
# All are on: every finding is fixed, with a named regression test in
# tests/fuzz/test_regressions_issue23.py. Setting one to False leaves those cases
# out (to isolate a new failure); ``FUZZ_ENABLE=NAME,NAME`` in the
# environment turns switches on without editing this file.

#: issue 22 item 5: masks of any shape that broadcasts to x (lower rank,
#: leading axes dropped). Today: masks of x's rank, each axis equal or 1.
BROADCAST_MASKS = True
#: issue 23 item 5: epsilon = 0 (a constant set must give bias, finite grads).
EPSILON_ZERO = True
#: issue 23 item 1 and its relatives found by this suite: under jit (and
#: under vmap, which jits), a mask that is broadcast (size 1 along an axis
#: where x is larger) can lose exactness, traced or closed over as a constant
#: (unless all True): instance_norm and group_norm(G=C) with (1, H, 1),
#: layer_norm over axis 1 with (1, H, 1) or over axis 0 with (1, 1, 1, 1),
#: batch_norm channels-last with (N, H, 1). While False, the jitted modes are
#: not compared for broadcast masks (eager still is).
ISSUE23_ITEM1_FIXED = True
#: finding of this suite: batch_renorm with a mask under jit (a constant
#: mask, or a traced broadcast one) forms its correction d inexactly (error
#: ~ u·|mean|/σ: 2.5e-4 at mean 1e4 in float32). While False, batch_renorm's
#: jitted modes are not compared when a mask is given.
BATCH_RENORM_MASK_FIXED = True

#: finding of this suite: switchable_norm and representative_batch_norm use
#: 16-bit parameters (mixture logits, calibration weights) in their own dtype
#: (softmax / sigmoid in bfloat16 or float16), so the output is off by more
#: than its final rounding. While False, those parameters are drawn in
#: float32 when the input is 16-bit.
LOW_PRECISION_PARAMS_FIXED = True

#: finding of this suite: representative_batch_norm across members
#: (vmap/pmap/shard_map with axis_name) forms x' = x + w_m·K(x) directly, so
#: its output loses u·|mean|/σ (1e-3 at mean 1e4 in float32; documented in
#: its docstring, against DESIGN.md's exactness contract). While False, its
#: vmap(axis_name) mode is not compared.
RBN_AXIS_NAME_EXACT = True

#: finding of this suite: switchable_norm's derivative with respect to
#: mean_logits is formed from the rounded means (2.8e-3 on a gradient of 0.33
#: at mean 1e4 in float32); the forward and the other derivatives are exact.
#: While False, mean_logits is not among the differentiated inputs.
SWITCHABLE_LOGIT_GRAD_FIXED = True

#: finding of this suite: batch_norm and batch_renorm in inference
#: (training=False) with a mask whose masked entries hold NaN give a NaN
#: gradient with respect to scale (the output is finite): the affine map is
#: applied before the masked entries are selected away. While False, masked
#: entries are not poisoned in the family's inference examples.
INFERENCE_MASK_NAN_GRAD_FIXED = True

_ENABLED = {n.strip() for n in os.environ.get("FUZZ_ENABLE", "").split(",") if n.strip()}
for _name in _ENABLED:
    if _name not in ("BROADCAST_MASKS", "EPSILON_ZERO", "ISSUE23_ITEM1_FIXED", "BATCH_RENORM_MASK_FIXED",
                     "LOW_PRECISION_PARAMS_FIXED", "RBN_AXIS_NAME_EXACT", "SWITCHABLE_LOGIT_GRAD_FIXED",
                     "INFERENCE_MASK_NAN_GRAD_FIXED"):
        raise ValueError(f"FUZZ_ENABLE: unknown switch {_name!r}")
    globals()[_name] = True

#: The fuzz suite's profile: "long" when HYPOTHESIS_PROFILE=long, else "ci"
#: (both registered in tests/conftest.py).
PROFILE = "long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "ci"
LONG = PROFILE == "long"


def examples(ci: int, long: int | None = None) -> settings:
    """``@settings`` for one fuzz test: the profile's, with ``ci`` examples in CI, ``long`` (default 10×) by hand.

    ``FUZZ_EXAMPLES=<n>`` overrides the count (e.g. a quick look under ``long``).
    """
    count = (long or 10 * ci) if LONG else ci
    if os.environ.get("FUZZ_EXAMPLES"):
        count = int(os.environ["FUZZ_EXAMPLES"])
    return settings(settings.get_profile(PROFILE), max_examples=count)


# ---------------------------------------------------------------- dtypes

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def unit_roundoff(dtype) -> float:
    """u = 2^-p for a p-bit significand: 2^-24 float32, 2^-8 bfloat16, 2^-11 float16, 2^-53 float64."""
    return float(jnp.finfo(dtype).eps) / 2


def compute_dtype(dtype):
    """Statistics are accumulated in at least float32 (DESIGN.md, Numerics)."""
    return jnp.promote_types(dtype, jnp.float32)


def gamma(n: int) -> float:
    """Units of roundoff a computation summing ``n`` terms may lose.

    ``4·√n``: the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput.
    2019) for a sum of n terms, λ·√n·u with λ = 4 (it holds with probability
    above 1 − 2·exp(−λ²/2) ≈ 0.9993 per sum whatever the summation order),
    plus 16 for the fixed number of elementwise roundings around the sums
    (shift, subtract, square, divide, rsqrt, scale, bias, casts).
    """
    return 4.0 * math.sqrt(max(n, 1)) + 16.0


def tolerance(ref_out, mag, n, dtype, out_dtype=None):
    """Elementwise bound on ``|jaxnorm − oracle|`` for one output.

    ``2·γ_n·u_c·mag + u_out·|ref| + tiny``: ``u_c`` the unit roundoff of the
    compute dtype, doubled because the oracle's own error (float64, same
    error model) may add to jaxnorm's; ``mag`` the oracle's magnitude array
    with the conditioning in it; ``u_out·|ref|`` the final rounding to the
    output dtype; ``tiny`` the output dtype's smallest subnormal.
    """
    out_dtype = dtype if out_dtype is None else out_dtype
    u_c = unit_roundoff(compute_dtype(dtype))
    u_out = unit_roundoff(out_dtype)
    tiny = float(jnp.finfo(out_dtype).smallest_subnormal)
    return 2 * gamma(n) * u_c * np.asarray(mag) + u_out * np.abs(ref_out) + tiny


def derivative_scale(d_ref: float, w, mag, zmax: float, r: float) -> float:
    """The magnitude a directional derivative ``⟨w, J·t⟩``'s rounding error is measured against.

    A tangent of ``zmax`` natural units moves each output by at most
    ``zmax·(2 + R)`` times its magnitude ``mag`` (the closed-form derivative of
    a normalization, ``σ⁻¹(g − ḡ − x̂·mean(g·x̂))``, R the largest ``|x̂|``).
    The errors of the statistics a set shares scale the whole derivative
    (``|D|``); the per-entry errors are independent under the probabilistic
    model behind :func:`gamma` and add in quadrature (λ = 4):
    ``(|D| + 4·‖w·mag‖₂)·zmax·(2 + R)``.
    """
    return (abs(d_ref) + 4.0 * float(np.linalg.norm(np.ravel(np.asarray(w) * np.asarray(mag))))) * zmax * (2 + r)


def rounding_scale(d_ref: float, products) -> float:
    """``|D| + 4·‖t·g‖₂``: the final rounding of each gradient (or tangent) entry, independent per entry."""
    return abs(d_ref) + 4.0 * float(np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64))) for p in products)))


# ---------------------------------------------------------------- choosers

class Chooser:
    """Draw static settings from hypothesis (``draw``) or from a seeded ``random.Random`` (``rng``)."""

    def __init__(self, draw=None, rng=None):
        self._draw, self._rng = draw, rng

    def one(self, options):
        options = list(options)
        if self._draw is not None:
            return self._draw(st.sampled_from(options))
        return self._rng.choice(options)

    def integer(self, lo: int, hi: int) -> int:
        if self._draw is not None:
            return self._draw(st.integers(lo, hi))
        return self._rng.randint(lo, hi)

    def boolean(self) -> bool:
        return bool(self.one((False, True)))

    def subset(self, items, min_size=1):
        """A non-empty (``min_size``) subset of ``items``, in order."""
        items = list(items)
        while True:
            picked = [i for i in items if self.boolean()]
            if len(picked) >= min_size:
                return picked
            if self._draw is not None:  # let hypothesis steer rather than loop
                return items[: max(min_size, 1)]


def shape(ch: Chooser, min_rank=2, max_rank=5, min_size=1, max_size=9, fixed=None):
    """A shape of rank ``min_rank``..``max_rank`` with sizes 1–9; ``fixed`` maps axis → size."""
    rank = ch.integer(min_rank, max_rank)
    out = [ch.integer(min_size, max_size) for _ in range(rank)]
    for a, size in (fixed or {}).items():
        out[a] = size
    return tuple(out)


def signed_axis(ch: Chooser, axis: int, ndim: int) -> int:
    """``axis`` as given or as its negative spelling."""
    return axis - ndim if ch.boolean() else axis


def mask_shape(ch: Chooser, x_shape, allow_none=True):
    """None, or a mask shape: each axis equal to x's or 1 (lower rank with BROADCAST_MASKS)."""
    if allow_none and ch.integer(0, 2) == 0:
        return None
    full = tuple(s if ch.integer(0, 2) else 1 for s in x_shape)
    if BROADCAST_MASKS and ch.boolean():
        drop = ch.integer(0, len(x_shape))
        full = full[drop:]
    return full


def divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]


def epsilon_choice(ch: Chooser, default):
    options = [default, 1e-5, 1e-3, 0.1]
    if EPSILON_ZERO:
        options.append(0.0)
    return ch.one(options)


def static_strategy(generator, ci_configs, pinned=()):
    """Static configurations: the hand-picked ``ci_configs`` in CI; under ``long``, those, ``pinned``
    (known-bug shapes, compared once their switch is on) and hypothesis-drawn ones.

    CI compiles once per configuration (a few seconds each on 2 cores), so
    it runs one or two chosen configurations per scheme on varied data; the
    long profile explores the configurations themselves.
    """
    if LONG:
        @st.composite
        def drawn(draw):
            return generator(Chooser(draw=draw))
        fixed = list(ci_configs) + list(pinned)
        return st.one_of(st.sampled_from(fixed), drawn()) if fixed else drawn()
    return st.sampled_from(list(ci_configs))


# ---------------------------------------------------------------- data

@st.composite
def data_params(draw, dtype):
    """How to fill the arrays of one example: seeds, mean, spread, mask pattern.

    Means up to 1e6 (1e4 in float16, whose largest value is 65504), either
    sign, spreads from 1e-3 to 10; optional quantization to a grid of the
    spread (ties and constant sets); masks of random density, whose False
    entries may hold NaN or Inf ("poison", which must never leak).
    """
    max_exp = 4.0 if jnp.dtype(dtype) == jnp.float16 else 6.0
    centred = draw(st.integers(0, 3)) == 0
    mean = 0.0 if centred else draw(st.sampled_from((-1.0, 1.0))) * 10 ** draw(st.floats(-1.0, max_exp))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "mean": mean,
        "spread": 10 ** draw(st.floats(-3.0, 1.0)),
        "quantize": draw(st.integers(0, 4)) == 0,
        "mask_seed": draw(st.integers(0, 2**32 - 1) if LONG else st.integers(0, 1)),
        "density": draw(st.sampled_from((0.3, 0.7, 0.95, 1.0))),
        "poison": draw(st.sampled_from((None, np.nan, np.inf))),
        "param_seed": draw(st.integers(0, 2**32 - 1)),
    }


def fill(shape, dtype, p, salt=0):
    """``x`` of ``shape``: normal(mean, spread), optionally quantized, rounded to ``dtype``."""
    rng = np.random.default_rng([p["seed"], salt])
    z = rng.standard_normal(shape)
    if p["quantize"]:
        z = np.round(z * 2) / 2
    x = p["mean"] + p["spread"] * z
    return np.asarray(jnp.asarray(x, dtype))


def mask(mshape, p, salt=0):
    """A boolean mask of ``mshape`` (``p``'s seed and density), or None."""
    if mshape is None:
        return None
    rng = np.random.default_rng([p["mask_seed"], salt, 7])
    return rng.random(mshape) < p["density"]


def poison(x, mask_array, p):
    """``x`` with its masked entries replaced by NaN or Inf (if ``p`` says so)."""
    if mask_array is None or p["poison"] is None:
        return x
    full = np.broadcast_to(mask_array, x.shape)
    return np.where(full, x, np.asarray(p["poison"], x.dtype)).astype(x.dtype)


def param(shape, dtype, p, salt, *, around=0.0, spread=1.0):
    """A parameter array: ``around + spread·normal``, rounded to ``dtype``."""
    rng = np.random.default_rng([p["param_seed"], salt])
    return np.asarray(jnp.asarray(around + spread * rng.standard_normal(shape), dtype))


def broadcast_mask_affected(x_shape, mshape) -> bool:
    """Whether a mask of ``mshape`` is in issue 23 item 1's family under jit (see ISSUE23_ITEM1_FIXED).

    A mask broadcast along some axis: its size is 1 where x's is larger.
    """
    if ISSUE23_ITEM1_FIXED or mshape is None:
        return False
    full = tuple(x_shape)[len(x_shape) - len(mshape):]
    return any(m == 1 and n > 1 for m, n in zip(mshape, full)) or len(mshape) < len(x_shape)
