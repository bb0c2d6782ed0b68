"""Agreement with PyTorch (CPU) as an independent implementation.

Every jaxnorm function is compared, on random shapes drawn by hypothesis and
in float32 and float64, with the matching ``torch.nn.functional`` function
computing in the same dtype:

* ``jn.layer_norm`` / ``jn.rms_norm`` with ``axis`` a set of axes against
  ``F.layer_norm`` / ``F.rms_norm`` on the input transposed so that those
  axes trail (torch's ``normalized_shape`` is always the trailing dims);
* ``jn.group_norm`` / ``jn.instance_norm`` against ``F.group_norm`` /
  ``F.instance_norm``, which are channels-first ``(N, C, *)``: jaxnorm is run
  with ``channel_axis=1`` on the same NCHW array, with ``channel_axis=-1`` on
  the channels-last array (``moveaxis``), and with the channels somewhere in
  between, and compared after moving the channels back.

Per-example parameters (a leading batch axis on scale/bias) have no torch
counterpart; they are compared with torch's unscaled normalization followed by
``* w + b`` broadcast per example.

Layouts and defaults are mapped explicitly: torch's ``F.rms_norm`` takes
``eps=None`` to mean ``finfo.eps``, so the epsilon is always passed to it
(jaxnorm's default is 1e-5 for every function but ``rms_norm``, 1e-6).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnorm as jn

DTYPES = ["float32", "float64"]
# Relative and absolute tolerance per dtype. torch computes in the same dtype
# (float32 statistics for float32 inputs); normalized values are O(1)-O(10).
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-10)}
# None: leave both libraries at their defaults (jaxnorm's documented defaults
# are then checked against torch's, passed explicitly where torch differs).
EPSILONS = [None, 1e-5, 1e-3, 0.25]
AFFINE = ["none", "scale", "bias", "both", "per_example"]

SETTINGS = settings(max_examples=25, deadline=None)

dims = st.integers(1, 6)


# ----------------------------------------------------------------- helpers --


def _data(seed: int, shape, dtype, *, loc: float = 3.0, spread: float = 2.0) -> np.ndarray:
    """Random normal entries with a random offset and spread, in ``dtype``."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-loc, loc)
    s = rng.uniform(0.5, spread)
    return (m + s * rng.standard_normal(shape)).astype(dtype)


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _check(got, want: np.ndarray, dtype: str) -> None:
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, **TOL[dtype])


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


# ------------------------------------------------------- torch references --


def _torch_group_norm(x: np.ndarray, groups: int, w, b, eps: float) -> np.ndarray:
    """``F.group_norm`` on a channels-first array.

    ``F.group_norm`` refuses a reduction set of one entry when the whole batch
    has only one (``N * C/G * prod(spatial) == 1``); the native op it wraps
    computes that case (output = bias), so it is used there instead.
    """
    xt, wt, bt = _t(x), _t(w), _t(b)
    n, c = x.shape[:2]
    if n * (c // groups) * math.prod(x.shape[2:]) == 1:
        return torch.group_norm(xt, groups, wt, bt, eps, False).numpy()
    return F.group_norm(xt, groups, wt, bt, eps).numpy()


def _torch_instance_norm(x: np.ndarray, w, b, eps: float) -> np.ndarray:
    """``F.instance_norm`` with input statistics on a channels-first array.

    ``F.instance_norm`` refuses a single spatial position; the native op
    computes it (output = bias), so it is used there instead.
    """
    xt, wt, bt = _t(x), _t(w), _t(b)
    if math.prod(x.shape[2:]) == 1:
        return torch.instance_norm(xt, wt, bt, None, None, True, 0.1, eps, False).numpy()
    return F.instance_norm(xt, weight=wt, bias=bt, use_input_stats=True, eps=eps).numpy()


def _params(seed: int, affine: str, shared_shape, batch: int, dtype):
    """(scale, bias) as numpy arrays for an affine mode, or None each.

    ``shared_shape`` is the shape of a shared parameter; "per_example" prepends
    the batch size.
    """
    if affine == "per_example":
        shape = (batch,) + tuple(shared_shape)
    else:
        shape = tuple(shared_shape)
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
    """An input shape, a sorted set of axes to normalize and its spelling.

    ``trailing`` restricts the axes to the trailing ones (torch's
    ``normalized_shape`` convention, no transposition needed).
    """
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(dims, min_size=rank, max_size=rank)))
    if draw(st.booleans()):
        k = draw(st.integers(1, rank))
        axes = tuple(range(rank - k, rank))
    else:
        axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
    # Spell each axis as given or negative; a single axis sometimes as an int.
    spelled = tuple(a - rank if draw(st.booleans()) else a for a in axes)
    if len(axes) == 1 and draw(st.booleans()):
        spelled = spelled[0]
    return shape, axes, spelled


def _to_trailing(x: np.ndarray, axes):
    """Transpose the normalized axes (in order) to the end; return array and perm."""
    rest = [a for a in range(x.ndim) if a not in axes]
    perm = rest + list(axes)
    return np.transpose(x, perm), perm


def _from_trailing(y: np.ndarray, perm) -> np.ndarray:
    return np.transpose(y, np.argsort(perm))


def _feature_param_positions(affine, axes):
    return (0,) + tuple(axes) if affine == "per_example" else tuple(axes)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    case=feature_cases(),
    affine=st.sampled_from(AFFINE),
    eps=st.sampled_from(EPSILONS),
    seed=st.integers(0, 2**31),
)
def test_layer_norm_matches_torch(dtype, case, affine, eps, seed):
    shape, axes, spelled = case
    rank = len(shape)
    if affine == "per_example" and (0 in axes or rank == len(axes)):
        affine = "both"  # per-example parameters need a batch axis left over
    x = _data(seed, shape, dtype)
    normalized = tuple(shape[a] for a in axes)
    scale, bias = _params(seed, affine, normalized, shape[0], dtype)

    got = jn.layer_norm(x, scale, bias, axis=spelled, **_eps_kwargs(eps))

    torch_eps = 1e-5 if eps is None else eps
    xt, perm = _to_trailing(x, axes)
    if affine == "per_example":
        y = F.layer_norm(_t(xt), list(normalized), eps=torch_eps).numpy()
        y = _from_trailing(y, perm)
        positions = _feature_param_positions(affine, axes)
        y = y * _expand(scale, rank, positions) + _expand(bias, rank, positions)
    else:
        y = F.layer_norm(_t(xt), list(normalized), _t(scale), _t(bias), torch_eps).numpy()
        y = _from_trailing(y, perm)
    _check(got, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    case=feature_cases(),
    affine=st.sampled_from(["none", "scale", "per_example"]),
    eps=st.sampled_from(EPSILONS),
    seed=st.integers(0, 2**31),
)
def test_rms_norm_matches_torch(dtype, case, affine, eps, seed):
    shape, axes, spelled = case
    rank = len(shape)
    if affine == "per_example" and (0 in axes or rank == len(axes)):
        affine = "scale"
    x = _data(seed, shape, dtype)
    normalized = tuple(shape[a] for a in axes)
    scale, _ = _params(seed, affine, normalized, shape[0], dtype)

    got = jn.rms_norm(x, scale, axis=spelled, **_eps_kwargs(eps))

    # torch's eps=None would mean finfo(dtype).eps: always pass jaxnorm's value.
    torch_eps = 1e-6 if eps is None else eps
    xt, perm = _to_trailing(x, axes)
    if affine == "per_example":
        y = F.rms_norm(_t(xt), list(normalized), eps=torch_eps).numpy()
        y = _from_trailing(y, perm) * _expand(scale, rank, (0,) + axes)
    else:
        y = F.rms_norm(_t(xt), list(normalized), _t(scale), eps=torch_eps).numpy()
        y = _from_trailing(y, perm)
    _check(got, y, dtype)


# ------------------------------------------------- GroupNorm / InstanceNorm --


@st.composite
def channel_cases(draw, min_spatial: int):
    """(N, C, spatial...) channels-first shape, a group count, a channel position.

    ``position`` is where the "middle" layout puts the channels (1..ndim-1).
    """
    n = draw(dims)
    c = draw(st.integers(1, 12))
    groups = draw(st.sampled_from(_divisors(c)))
    srank = draw(st.integers(min_spatial, 3))
    spatial = tuple(draw(st.lists(dims, min_size=srank, max_size=srank)))
    shape = (n, c) + spatial
    position = draw(st.integers(1, len(shape) - 1))
    return shape, groups, position


def _layout(x_nchw: np.ndarray, layout: str, position: int):
    """The input in ``layout``, the channel_axis to pass, the channel position."""
    ndim = x_nchw.ndim
    if layout == "nchw":
        return x_nchw, 1, 1
    if layout == "nhwc":
        return np.moveaxis(x_nchw, 1, -1), -1, ndim - 1
    # "middle": channels at an arbitrary position, spelled as a negative axis.
    return np.moveaxis(x_nchw, 1, position), position - ndim, position


LAYOUTS = ["nchw", "nhwc", "middle"]


def _run_channel_norm(fn, x, layout, position, scale, bias, eps, **kw):
    """Run ``fn`` on ``x`` (NCHW) in ``layout``; return the result as NCHW."""
    xl, channel_axis, pos = _layout(x, layout, position)
    got = fn(xl, scale, bias, channel_axis=channel_axis, **_eps_kwargs(eps), **kw)
    got = np.asarray(got)
    assert got.shape == xl.shape
    return np.moveaxis(got, pos, 1)


def _per_example_affine(y: np.ndarray, scale, bias) -> np.ndarray:
    """``y * w[:, :, None...] + b[:, :, None...]`` for an NCHW ``y``."""
    ndim = y.ndim
    out = y if scale is None else y * _expand(scale, ndim, (0, 1))
    return out if bias is None else out + _expand(bias, ndim, (0, 1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    case=channel_cases(min_spatial=0),
    affine=st.sampled_from(AFFINE),
    eps=st.sampled_from(EPSILONS),
    seed=st.integers(0, 2**31),
)
def test_group_norm_matches_torch(layout, dtype, case, affine, eps, seed):
    shape, groups, position = case
    x = _data(seed, shape, dtype)
    scale, bias = _params(seed, affine, (shape[1],), shape[0], dtype)

    got = _run_channel_norm(
        jn.group_norm, x, layout, position, scale, bias, eps, num_groups=groups
    )

    torch_eps = 1e-5 if eps is None else eps
    if affine == "per_example":
        want = _torch_group_norm(x, groups, None, None, torch_eps)
        want = _per_example_affine(want, scale, bias)
    else:
        want = _torch_group_norm(x, groups, scale, bias, torch_eps)
    _check(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    case=channel_cases(min_spatial=1),
    affine=st.sampled_from(AFFINE),
    eps=st.sampled_from(EPSILONS),
    seed=st.integers(0, 2**31),
)
def test_instance_norm_matches_torch(layout, dtype, case, affine, eps, seed):
    shape, _, position = case
    x = _data(seed, shape, dtype)
    scale, bias = _params(seed, affine, (shape[1],), shape[0], dtype)

    got = _run_channel_norm(jn.instance_norm, x, layout, position, scale, bias, eps)

    torch_eps = 1e-5 if eps is None else eps
    if affine == "per_example":
        want = _torch_instance_norm(x, None, None, torch_eps)
        want = _per_example_affine(want, scale, bias)
    else:
        want = _torch_instance_norm(x, scale, bias, torch_eps)
    _check(got, want, dtype)


# ---------------------------------------------------- fixed sanity anchors --
# A few hand-picked cases that hypothesis may not hit: a group of one entry
# (output = bias), a non-trivial group count on an image, a large offset.


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_one_entry_groups_give_bias(dtype):
    x = _data(0, (1, 4), dtype)
    scale = _data(1, (4,), dtype)
    bias = _data(2, (4,), dtype)
    got = jn.group_norm(x, scale, bias, num_groups=4, channel_axis=1)
    want = _torch_group_norm(x, 4, scale, bias, 1e-5)
    np.testing.assert_allclose(want, np.broadcast_to(bias, (1, 4)), rtol=0, atol=0)
    _check(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_image_nhwc_large_offset(dtype):
    # 32 channels in 8 groups on an 8x8 image, mean ~100: the NCHW torch result
    # against jaxnorm on the NHWC transpose.
    rng = np.random.default_rng(7)
    x = (100.0 + rng.standard_normal((2, 32, 8, 8))).astype(dtype)
    scale = rng.standard_normal(32).astype(dtype)
    bias = rng.standard_normal(32).astype(dtype)
    got = jn.group_norm(np.moveaxis(x, 1, -1), scale, bias, num_groups=8)
    want = _torch_group_norm(x, 8, scale, bias, 1e-5)
    # float32 inputs near 100 carry an absolute rounding of ~4e-6 per entry,
    # amplified by 1/std ~ 1 and |scale|; torch and jaxnorm subtract the mean
    # differently, so allow a few ulps of 100.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else TOL[dtype]
    got = np.moveaxis(np.asarray(got), -1, 1)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, **tol)
