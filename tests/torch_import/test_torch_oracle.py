"""Agreement with PyTorch (CPU) as an independent implementation.

Every jaxnorm function is compared, on random shapes drawn by hypothesis and
in float32 and float64, with the matching ``torch.nn.functional`` function
computing in the same dtype:

* ``jn.layer_norm`` / ``jn.rms_norm`` with ``axis`` a set of axes against
  ``F.layer_norm`` / ``F.rms_norm`` on the input transposed so that those
  axes trail (torch's ``normalized_shape`` is always the trailing dims; when
  the drawn axes are the trailing ones no transposition happens);
* ``jn.group_norm`` / ``jn.instance_norm`` against ``F.group_norm`` /
  ``F.instance_norm``, which are channels-first ``(N, C, *)``. In every
  example jaxnorm runs with ``channel_axis=1`` on the same NCHW array, with
  ``channel_axis=-1`` on the channels-last array (``moveaxis``), and, when the
  drawn channel position lies strictly between, with the channels there
  (spelled as a negative axis); each result is moved back to NCHW and
  compared.

Per-example parameters (a leading batch axis on scale/bias) have no torch
counterpart; they are compared with torch's unscaled normalization followed by
``* w[:, :, None...] + b[:, :, None...]``.

Layouts and defaults are mapped explicitly: torch's ``F.rms_norm`` takes
``eps=None`` to mean ``finfo.eps``, so the epsilon is always passed to it.
With ``eps`` drawn as None jaxnorm runs at its defaults (1e-5; 1e-6 for
``rms_norm``) and torch is given those values, checking the defaults too.

Tolerances: float64 1e-10; float32 2e-5 relative and absolute, plus a slack
for torch's own rounding, which is not small everywhere: torch forms
``y = x·A + B`` with ``A = rstd·w`` and ``B = b − mean·A``, so its absolute
error grows like ``ulp · (|x| + |mean|) · rstd · |w|``, which is large for a
set with a tiny spread (one entry, or two nearly equal ones: rstd up to
1/sqrt(eps)). That bound, computed in float64 from the data, is added to the
absolute tolerance entry by entry. jaxnorm itself forms ``(x − s) − m`` and is
accurate there (see ``test_one_entry_sets_give_exactly_bias``).

jaxnorm calls are jitted (one compilation per shape instead of one per
primitive in eager mode), which keeps the file fast.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnorm as jn

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-10)}
# Multiple of ulp · (|x| + |mean|) · rstd · |w| allowed for torch's rounding.
SLACK_ULPS = 8
# None: both libraries at jaxnorm's documented defaults.
EPSILONS = [None, 1e-5, 1e-3, 0.25]
AFFINE = ["none", "scale", "bias", "both", "per_example"]

SETTINGS = settings(max_examples=25, deadline=None)

dims = st.integers(1, 6)
seeds = st.integers(0, 2**31)


# ----------------------------------------------------------------- helpers --


@functools.lru_cache(maxsize=None)
def _jit(fn, **static):
    """``fn`` jitted with its keyword-only settings fixed (cached per settings)."""
    return jax.jit(functools.partial(fn, **static))


def _data(seed: int, shape, dtype, *, loc: float = 3.0, spread: float = 2.0) -> np.ndarray:
    """Random normal entries with a random offset and spread, in ``dtype``."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-loc, loc)
    s = rng.uniform(0.5, spread)
    return (m + s * rng.standard_normal(shape)).astype(dtype)


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _expand(p: np.ndarray, ndim: int, positions) -> np.ndarray:
    """Place the axes of ``p`` at ``positions`` of a rank-``ndim`` shape, 1 elsewhere."""
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return p.reshape(shape)


def _divisors(c: int) -> list[int]:
    return [g for g in range(1, c + 1) if c % g == 0]


def _eps_kwargs(eps):
    return {} if eps is None else {"epsilon": eps}


def _torch_slack(x_rows: np.ndarray, eps: float, dtype: str, shape, w=None) -> np.ndarray:
    """Bound on torch's rounding, ``ulp·(|x| + |mean|)·rstd·|w|``, per entry.

    ``x_rows`` is the input reshaped to ``(sets, entries per set)`` in the
    layout torch sees; the bound is returned in ``shape`` (that layout).
    ``w`` is None or broadcastable to ``shape``.
    """
    r = x_rows.astype(np.float64)
    mean = r.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(r.var(axis=1, keepdims=True) + eps)
    bound = ((np.abs(r) + np.abs(mean)) * rstd).reshape(shape)
    if w is not None:
        bound = bound * np.abs(w.astype(np.float64))
    return SLACK_ULPS * np.finfo(dtype).eps * bound


def _check(got, want: np.ndarray, dtype: str, slack=0.0) -> None:
    """``|got − want| <= rtol·|want| + atol + slack``, entry by entry, and dtypes."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert want.dtype == np.dtype(dtype), (want.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), got
    tol = TOL[dtype]
    g, w = got.astype(np.float64), want.astype(np.float64)
    err = np.abs(g - w)
    bound = tol["rtol"] * np.abs(w) + tol["atol"] + slack
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), err.shape)
        raise AssertionError(
            f"{bad.sum()} of {err.size} entries differ beyond tolerance; worst at "
            f"{i}: jaxnorm {g[i]!r}, torch {w[i]!r}, |diff| {err[i]:.3g} > "
            f"bound {bound[i]:.3g}\njaxnorm:\n{got}\ntorch:\n{want}"
        )


def _params(seed: int, affine: str, shared_shape, batch: int, dtype):
    """(scale, bias) as numpy arrays for an affine mode, or None each.

    ``shared_shape`` is a shared parameter's shape; "per_example" prepends the
    batch size.
    """
    shape = tuple(shared_shape)
    if affine == "per_example":
        shape = (batch,) + shape
    scale = _data(seed + 1, shape, dtype, loc=1.5, spread=1.0)
    bias = _data(seed + 2, shape, dtype, loc=1.5, spread=1.0)
    if affine in ("none", "bias"):
        scale = None
    if affine in ("none", "scale"):
        bias = None
    return scale, bias


# ------------------------------------------------------ LayerNorm / RMSNorm --


@st.composite
def feature_cases(draw):
    """An input shape, a sorted set of axes to normalize, and its spelling.

    Half the time the axes are the trailing ones (torch's convention as is).
    Each axis is spelled as is or negative; a single one sometimes as an int.
    """
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(dims, min_size=rank, max_size=rank)))
    if draw(st.booleans()):
        k = draw(st.integers(1, rank))
        axes = tuple(range(rank - k, rank))
    else:
        axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
    spelled = tuple(a - rank if draw(st.booleans()) else a for a in axes)
    if len(axes) == 1 and draw(st.booleans()):
        spelled = spelled[0]
    return shape, axes, spelled


def _to_trailing(x: np.ndarray, axes):
    """Transpose the normalized axes (in order) to the end; return array and perm."""
    perm = [a for a in range(x.ndim) if a not in axes] + list(axes)
    return np.transpose(x, perm), perm


def _from_trailing(y: np.ndarray, perm) -> np.ndarray:
    return np.transpose(y, np.argsort(perm))


def _feature_affine(affine, axes, rank):
    # Per-example parameters need a batch axis that is not normalized.
    if affine == "per_example" and (0 in axes or rank == len(axes)):
        return "both"
    return affine


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=feature_cases(), affine=st.sampled_from(AFFINE),
       eps=st.sampled_from(EPSILONS), seed=seeds)
def test_layer_norm_matches_torch(dtype, case, affine, eps, seed):
    shape, axes, spelled = case
    rank = len(shape)
    affine = _feature_affine(affine, axes, rank)
    x = _data(seed, shape, dtype)
    normalized = tuple(shape[a] for a in axes)
    scale, bias = _params(seed, affine, normalized, shape[0], dtype)

    got = _jit(jn.layer_norm, axis=spelled, **_eps_kwargs(eps))(x, scale, bias)

    torch_eps = 1e-5 if eps is None else eps
    xt, perm = _to_trailing(x, axes)
    rows = xt.reshape(-1, math.prod(normalized))
    if affine == "per_example":
        y = F.layer_norm(_t(xt), list(normalized), eps=torch_eps).numpy()
        y = _from_trailing(y, perm)
        positions = (0,) + axes
        w = _expand(scale, rank, positions)
        want = y * w + _expand(bias, rank, positions)
        slack = _from_trailing(_torch_slack(rows, torch_eps, dtype, xt.shape), perm) * np.abs(w)
    else:
        y = F.layer_norm(_t(xt), list(normalized), _t(scale), _t(bias), torch_eps).numpy()
        want = _from_trailing(y, perm)
        slack = _from_trailing(_torch_slack(rows, torch_eps, dtype, xt.shape, scale), perm)
    _check(got, want, dtype, slack)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=feature_cases(), affine=st.sampled_from(["none", "scale", "per_example"]),
       eps=st.sampled_from(EPSILONS), seed=seeds)
def test_rms_norm_matches_torch(dtype, case, affine, eps, seed):
    # y = x·rsqrt(E[x²] + ε)·w has no cancellation: relative error only, no slack.
    shape, axes, spelled = case
    rank = len(shape)
    affine = _feature_affine(affine, axes, rank)
    x = _data(seed, shape, dtype)
    normalized = tuple(shape[a] for a in axes)
    scale, _ = _params(seed, affine, normalized, shape[0], dtype)

    got = _jit(jn.rms_norm, axis=spelled, **_eps_kwargs(eps))(x, scale)

    # torch's eps=None would mean finfo(dtype).eps: always pass jaxnorm's value.
    torch_eps = 1e-6 if eps is None else eps
    xt, perm = _to_trailing(x, axes)
    if affine == "per_example":
        y = F.rms_norm(_t(xt), list(normalized), eps=torch_eps).numpy()
        want = _from_trailing(y, perm) * _expand(scale, rank, (0,) + axes)
    else:
        y = F.rms_norm(_t(xt), list(normalized), _t(scale), eps=torch_eps).numpy()
        want = _from_trailing(y, perm)
    _check(got, want, dtype)


# ------------------------------------------------- GroupNorm / InstanceNorm --


@st.composite
def channel_cases(draw, min_spatial: int):
    """(N, C, spatial...) channels-first shape, a group count, a channel position.

    ``position`` (1..ndim-1) is where the third layout puts the channels
    (used when it is neither 1 nor ndim-1).
    """
    n = draw(dims)
    c = draw(st.integers(1, 12))
    groups = draw(st.sampled_from(_divisors(c)))
    srank = draw(st.integers(min_spatial, 3))
    spatial = tuple(draw(st.lists(dims, min_size=srank, max_size=srank)))
    shape = (n, c) + spatial
    position = draw(st.integers(1, len(shape) - 1))
    return shape, groups, position


def _run_layouts(fn, x: np.ndarray, position: int, scale, bias, **static):
    """``fn`` on ``x`` (NCHW) in three layouts; results moved back to NCHW.

    NCHW with channel_axis=1, NHWC (moveaxis to the end) with channel_axis=-1,
    and, if ``position`` is strictly between, channels there with
    channel_axis=position-ndim.
    """
    nd = x.ndim
    layouts = {"nchw": (1, 1), "nhwc": (nd - 1, -1)}
    if 1 < position < nd - 1:  # otherwise the same as one of the two above
        layouts["middle"] = (position, position - nd)
    inputs = {k: np.moveaxis(x, 1, pos) for k, (pos, _) in layouts.items()}
    axes = {k: ax for k, (_, ax) in layouts.items()}

    def run(inputs, scale, bias):
        return {k: fn(xl, scale, bias, channel_axis=axes[k], **static) for k, xl in inputs.items()}

    outs = jax.jit(run)(inputs, scale, bias)
    result = {}
    for k, (pos, _) in layouts.items():
        y = np.asarray(outs[k])
        assert y.shape == inputs[k].shape, (k, y.shape, inputs[k].shape)
        result[k] = np.moveaxis(y, pos, 1)
    return result


def _per_example_affine(y: np.ndarray, scale, bias) -> np.ndarray:
    """``y * w[:, :, None...] + b[:, :, None...]`` for an NCHW ``y``."""
    out = y if scale is None else y * _expand(scale, y.ndim, (0, 1))
    return out if bias is None else out + _expand(bias, y.ndim, (0, 1))


def _torch_group_norm(x: np.ndarray, groups: int, w, b, eps: float) -> np.ndarray:
    """``F.group_norm`` on a channels-first array.

    ``F.group_norm`` refuses input whose whole batch holds one entry per group
    (``N * C/G * prod(spatial) == 1``); the native op it wraps computes that
    case, so it is called directly there.
    """
    xt, wt, bt = _t(x), _t(w), _t(b)
    n, c = x.shape[:2]
    if n * (c // groups) * math.prod(x.shape[2:]) == 1:
        return torch.group_norm(xt, groups, wt, bt, eps, False).numpy()
    return F.group_norm(xt, groups, wt, bt, eps).numpy()


def _torch_instance_norm(x: np.ndarray, w, b, eps: float) -> np.ndarray:
    """``F.instance_norm`` with input statistics on a channels-first array.

    ``F.instance_norm`` refuses a single spatial position; the native op
    computes it, so it is called directly there.
    """
    xt, wt, bt = _t(x), _t(w), _t(b)
    if math.prod(x.shape[2:]) == 1:
        return torch.instance_norm(xt, wt, bt, None, None, True, 0.1, eps, False).numpy()
    return F.instance_norm(xt, weight=wt, bias=bt, use_input_stats=True, eps=eps).numpy()


def _check_channel_norm(fn, torch_fn, x, groups, position, affine, eps, seed, dtype, **static):
    scale, bias = _params(seed, affine, (x.shape[1],), x.shape[0], dtype)
    got = _run_layouts(fn, x, position, scale, bias, **_eps_kwargs(eps), **static)

    torch_eps = 1e-5 if eps is None else eps
    rows = x.reshape(x.shape[0] * groups, -1)
    if affine == "per_example":
        want = _per_example_affine(torch_fn(x, None, None, torch_eps), scale, bias)
        w = _expand(scale, x.ndim, (0, 1))
    else:
        want = torch_fn(x, scale, bias, torch_eps)
        w = None if scale is None else _expand(scale, x.ndim, (1,))
    slack = _torch_slack(rows, torch_eps, dtype, x.shape, w)
    for layout, y in got.items():
        try:
            _check(y, want, dtype, slack)
        except AssertionError as e:
            raise AssertionError(f"layout {layout}: {e}") from None


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=channel_cases(min_spatial=0), affine=st.sampled_from(AFFINE),
       eps=st.sampled_from(EPSILONS), seed=seeds)
def test_group_norm_matches_torch(dtype, case, affine, eps, seed):
    shape, groups, position = case
    x = _data(seed, shape, dtype)
    torch_fn = lambda x, w, b, eps: _torch_group_norm(x, groups, w, b, eps)  # noqa: E731
    _check_channel_norm(jn.group_norm, torch_fn, x, groups, position, affine, eps, seed,
                        dtype, num_groups=groups)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=channel_cases(min_spatial=1), affine=st.sampled_from(AFFINE),
       eps=st.sampled_from(EPSILONS), seed=seeds)
def test_instance_norm_matches_torch(dtype, case, affine, eps, seed):
    shape, _, position = case
    x = _data(seed, shape, dtype)
    _check_channel_norm(jn.instance_norm, _torch_instance_norm, x, shape[1], position,
                        affine, eps, seed, dtype)


# ---------------------------------------------------- fixed sanity anchors --


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_entry_sets_give_exactly_bias(dtype):
    # A set of one entry has zero variance and x − mean = 0: the output is the
    # bias exactly. torch (x·A + B) only approximates it, within its slack.
    x = _data(0, (1, 4), dtype)
    scale = _data(1, (4,), dtype)
    bias = _data(2, (4,), dtype)
    got = np.asarray(jn.group_norm(x, scale, bias, num_groups=4, channel_axis=1))
    np.testing.assert_array_equal(got, bias[None])
    want = _torch_group_norm(x, 4, scale, bias, 1e-5)
    _check(got, want, dtype, _torch_slack(x.reshape(4, 1), 1e-5, dtype, x.shape, scale))
    # Same for InstanceNorm over one spatial position and LayerNorm over one
    # feature (no bias: exactly zero).
    got = np.asarray(jn.instance_norm(x[:, None, :], scale, bias))
    np.testing.assert_array_equal(got, bias[None, None])
    got = np.asarray(jn.layer_norm(x.reshape(4, 1)))
    np.testing.assert_array_equal(got, np.zeros((4, 1), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_image_nhwc_large_offset(dtype):
    # 32 channels in 8 groups on an 8x8 image, mean ~100: torch on NCHW against
    # jaxnorm on the NHWC transpose.
    rng = np.random.default_rng(7)
    x = (100.0 + rng.standard_normal((2, 32, 8, 8))).astype(dtype)
    scale = rng.standard_normal(32).astype(dtype)
    bias = rng.standard_normal(32).astype(dtype)
    got = jn.group_norm(np.moveaxis(x, 1, -1), scale, bias, num_groups=8)
    got = np.moveaxis(np.asarray(got), -1, 1)
    want = _torch_group_norm(x, 8, scale, bias, 1e-5)
    slack = _torch_slack(x.reshape(16, -1), 1e-5, dtype, x.shape, scale[:, None, None])
    _check(got, want, dtype, slack)
