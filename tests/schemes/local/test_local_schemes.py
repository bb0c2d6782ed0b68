"""Local response norm, filter response norm + TLU and EvoNorm-S0.

Oracles:

* LRN against ``torch.nn.functional.local_response_norm`` (float64), values
  and autograd gradients, in PyTorch's own NC... layouts and, after moving
  the channel axis, in any other.
* FRN + TLU (Singh & Krishnan 2020) and EvoNorm-S0 (Liu et al. 2020) against
  float64 NumPy transcriptions of the papers' equations written below, one
  loop per (example, channel) or (example, group); they share nothing with
  ``jaxnorm`` or ``jaxnorm.reference``.

Then exactness at large means, jit / vmap / derivatives of order 2, constant
inputs, bfloat16, and the trace-time error contract.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

import jaxnorm as jn

TIGHT = dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Oracles.
# ---------------------------------------------------------------------------


def torch_lrn(x, *, size, alpha, beta, k, channel_axis, cot=None):
    """PyTorch's LRN of ``x`` (float64), and ``d sum(y·cot) / dx`` when ``cot`` is given.

    Inputs of rank >= 3 are handed to PyTorch as ``(N, C, ...)`` (its native
    layouts); lower ranks as ``(M, C, 1)``, since PyTorch wants rank >= 3.
    """
    x = np.asarray(x, np.float64)
    native = x.ndim >= 3
    moved_shape = np.moveaxis(x, channel_axis, 1 if native else -1).shape

    def to_torch(a, **kw):
        a = np.moveaxis(np.asarray(a, np.float64), channel_axis, 1 if native else -1)
        return torch.tensor(a if native else a.reshape(-1, a.shape[-1])[..., None], **kw)

    def from_torch(t):
        t = t.detach().numpy()
        t = t if native else t[..., 0].reshape(moved_shape)
        return np.moveaxis(t, 1 if native else -1, channel_axis)

    t = to_torch(x, requires_grad=True)
    y = torch.nn.functional.local_response_norm(t, size, alpha=alpha, beta=beta, k=k)
    if cot is None:
        return from_torch(y)
    (y * to_torch(cot)).sum().backward()
    return from_torch(y), from_torch(t.grad)


def _to_nsc(x, channel_axis):
    """``x`` as float64 ``(N, S, C)``: batch, flattened spatial axes, channels."""
    moved = np.moveaxis(np.asarray(x, np.float64), channel_axis, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1]), moved.shape


def _from_nsc(y, moved_shape, channel_axis):
    return np.moveaxis(y.reshape(moved_shape), -1, channel_axis)


def _per_nc(p, default, n, c):
    """A parameter (None, ``(C,)`` or ``(N, C)``) as a float64 ``(N, C)`` table."""
    if p is None:
        return np.full((n, c), default, np.float64)
    p = np.asarray(p, np.float64)
    if p.shape == (c,):
        return np.tile(p, (n, 1))
    assert p.shape == (n, c), p.shape
    return p


def frn_paper(x, gamma=None, beta=None, tau=None, *, channel_axis=-1, eps=1e-6):
    """Singh & Krishnan (2020), Algorithm 1 / eqs. (1)-(3), per example and channel::

        ν² = Σ_i x_i² / N,   x̂ = x / sqrt(ν² + ε),   y = γ x̂ + β,   z = max(y, τ)
    """
    xs, moved_shape = _to_nsc(x, channel_axis)
    n, s, c = xs.shape
    g, b = _per_nc(gamma, 1.0, n, c), _per_nc(beta, 0.0, n, c)
    t = None if tau is None else _per_nc(tau, 0.0, n, c)
    out = np.empty_like(xs)
    for i in range(n):
        for j in range(c):
            resp = xs[i, :, j]
            nu2 = sum(float(r) * float(r) for r in resp) / s
            y = g[i, j] * (resp / np.sqrt(nu2 + eps)) + b[i, j]
            out[i, :, j] = y if t is None else np.maximum(y, t[i, j])
    return _from_nsc(out, moved_shape, channel_axis)


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z), without overflow


def s0_paper(x, gamma=None, beta=None, v=None, *, num_groups, channel_axis=-1, eps=1e-5):
    """Liu et al. (2020), EvoNorm-S0: ``x·σ(v·x) / sqrt(s²_{w,h,c/g}(x) + ε) · γ + β``.

    ``s²_{w,h,c/g}`` is the biased variance over the spatial positions and
    the contiguous group of ``C/g`` channels, per example (two passes).
    """
    xs, moved_shape = _to_nsc(x, channel_axis)
    n, _, c = xs.shape
    g, b, vv = _per_nc(gamma, 1.0, n, c), _per_nc(beta, 0.0, n, c), _per_nc(v, 1.0, n, c)
    width = c // num_groups
    out = np.empty_like(xs)
    for i in range(n):
        for grp in range(num_groups):
            cs = slice(grp * width, (grp + 1) * width)
            block = xs[i, :, cs]  # (S, C/g)
            mean = block.sum() / block.size
            var = ((block - mean) ** 2).sum() / block.size
            num = block * _sigmoid(vv[i, cs] * block)
            out[i, :, cs] = num / np.sqrt(var + eps) * g[i, cs] + b[i, cs]
    return _from_nsc(out, moved_shape, channel_axis)


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


# ---------------------------------------------------------------------------
# Compiled entry points, shared by the tests so each configuration compiles
# once (jit equals eager is checked separately below).
# ---------------------------------------------------------------------------

frn = jax.jit(jn.filter_response_norm, static_argnames=("channel_axis", "epsilon"))
s0 = jax.jit(jn.evonorm_s0, static_argnames=("num_groups", "channel_axis", "epsilon"))
lrn = jax.jit(jn.local_response_norm, static_argnames=("size", "alpha", "beta", "k", "channel_axis"))


@functools.partial(jax.jit, static_argnames=("size", "alpha", "beta", "k", "channel_axis"))
def lrn_value_and_grad(x, cot, *, size, alpha, beta, k, channel_axis):
    """``y`` and ``jax.grad`` of ``sum(y·cot)`` w.r.t. ``x``."""
    def f(x):
        return jn.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k, channel_axis=channel_axis)

    return f(x), jax.grad(lambda x: jnp.sum(f(x) * cot))(x)


@functools.partial(jax.jit, static_argnames=("fn", "channel_axis", "num_groups"))
def grads_of_sum(fn, x, p1, p2, p3, cot, *, channel_axis=-1, num_groups=None):
    """Gradients of ``sum(fn(x, p1, p2, p3)·cot)`` w.r.t. all four arguments."""
    kw = dict(channel_axis=channel_axis)
    if num_groups is not None:
        kw["num_groups"] = num_groups
    return jax.grad(lambda *a: jnp.sum(fn(*a, **kw) * cot), argnums=(0, 1, 2, 3))(x, p1, p2, p3)


# ---------------------------------------------------------------------------
# Layouts and parameters.
# ---------------------------------------------------------------------------

# id -> (shape, channel_axis); every shape has C = 4 channels and batch 2 on axis 0.
LAYOUTS = {
    "NLC": ((2, 5, 4), -1),
    "NHWC": ((2, 3, 4, 4), -1),
    "NDHWC": ((2, 2, 3, 2, 4), -1),
    "NCL": ((2, 4, 5), 1),
    "NCHW": ((2, 4, 3, 4), 1),
    "NCDHW": ((2, 4, 2, 3, 2), 1),
    "NHCW-middle": ((2, 3, 4, 5), 2),
    "NC": ((2, 4), -1),
}
C = 4


def _params(rng, shape, channel_axis, kind, *, center=0.0, spread=1.0):
    """A parameter: None, per channel ``(C,)`` or per example ``(N, C)``."""
    if kind is None:
        return None
    c = shape[channel_axis]
    pshape = (c,) if kind == "channel" else (shape[0], c)
    return center + spread * rng.standard_normal(pshape)


def _broadcast_param(p, shape, channel_axis):
    """``p`` ((C,) or (N, C)) broadcast to the input's shape, for comparisons."""
    ca = channel_axis % len(shape)
    p = np.asarray(p)
    target = [1] * len(shape)
    target[ca] = shape[ca]
    if p.ndim == 2:
        target[0] = shape[0]
    return np.broadcast_to(p.reshape(target), shape)


def _three_params(rng, shape, channel_axis, kind):
    """scale (around 1), bias (around 0), and a third (tau or v) around 0.2."""
    return (
        _params(rng, shape, channel_axis, kind, center=1.0, spread=0.5),
        _params(rng, shape, channel_axis, kind, spread=0.3),
        _params(rng, shape, channel_axis, kind, center=0.2, spread=0.5),
    )


# ---------------------------------------------------------------------------
# 1. Local response norm against PyTorch.
# ---------------------------------------------------------------------------

LRN_SETTINGS = {  # size, alpha, beta, k
    "size1": (1, 1.0, 0.75, 1.0),
    "size2": (2, 0.5, 0.5, 2.0),
    "size3-alexnet": (3, 1e-4, 0.75, 1.0),
    "size5": (5, 2.0, 1.5, 0.5),
    "size4-even": (4, 3.0, 0.25, 1.0),
    "size11-gt-C": (11, 1.0, 0.75, 1.5),
}
LRN_LAYOUTS = {
    "NCL": ((2, 7, 5), 1),
    "NCHW": ((2, 6, 3, 4), 1),
    "NCDHW": ((2, 5, 2, 3, 3), 1),
    "NHWC": ((2, 3, 4, 6), -1),
    "middle": ((2, 3, 7, 4), 2),
    "middle-negative": ((2, 3, 7, 4), -2),
    "rank1": ((7,), 0),
    "rank2": ((3, 7), -1),
}
LRN_CASES = [("NCHW", name) for name in LRN_SETTINGS] + [
    ("NCL", "size3-alexnet"), ("NCL", "size4-even"),
    ("NCDHW", "size5"), ("NCDHW", "size11-gt-C"),
    ("NHWC", "size2"), ("NHWC", "size5"),
    ("middle", "size4-even"), ("middle", "size1"),
    ("middle-negative", "size3-alexnet"),
    ("rank1", "size11-gt-C"), ("rank2", "size2"),
]


@pytest.mark.parametrize("layout, setting", LRN_CASES, ids=[f"{a}-{b}" for a, b in LRN_CASES])
def test_lrn_matches_torch_values_and_gradients(layout, setting):
    shape, channel_axis = LRN_LAYOUTS[layout]
    size, alpha, beta, k = LRN_SETTINGS[setting]
    rng = np.random.default_rng(LRN_CASES.index((layout, setting)))
    x = 1.5 * rng.standard_normal(shape)
    cot = rng.standard_normal(shape)
    settings = dict(size=size, alpha=alpha, beta=beta, k=k, channel_axis=channel_axis)
    want_y, want_g = torch_lrn(x, cot=cot, **settings)

    y, g = lrn_value_and_grad(x, cot, **settings)
    assert y.dtype == jnp.float64 and y.shape == shape
    np.testing.assert_allclose(y, want_y, **TIGHT)
    np.testing.assert_allclose(g, want_g, **TIGHT)
    if alpha >= 0.5:  # the window is not negligible: a wrong window would show
        assert np.max(np.abs(want_y - x)) > 1e-2


def test_lrn_window_is_pytorch_asymmetric_window():
    """An even window reaches size//2 channels back and (size-1)//2 forward."""
    y = lrn(np.ones((1, 6, 1)), size=4, alpha=4.0, beta=1.0, k=1.0, channel_axis=1)
    # All ones: channel c sees channels max(0, c-2) .. min(5, c+1); mirrored
    # (c-1 .. c+2) it would be [3, 4, 4, 4, 3, 2].
    counts = np.array([2, 3, 4, 4, 4, 3], np.float64)
    np.testing.assert_allclose(np.asarray(y)[0, :, 0], 1 / (1 + counts), **TIGHT)


def test_lrn_default_settings_match_torch_defaults():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 3, 8)) * 20
    want = torch.nn.functional.local_response_norm(
        torch.tensor(np.moveaxis(x, -1, 1)), 5).numpy()
    np.testing.assert_allclose(jax.jit(jn.local_response_norm)(x), np.moveaxis(want, 1, -1), **TIGHT)


def test_lrn_accepts_numpy_scalars_and_integral_size():
    x = np.random.default_rng(61).standard_normal((2, 5, 3))
    want = lrn(x, size=3, alpha=0.5, beta=0.75, k=2.0, channel_axis=1)
    got = jax.jit(lambda x: jn.local_response_norm(
        x, size=np.int64(3), alpha=np.float32(0.5), beta=np.float64(0.75), k=2, channel_axis=np.int32(1)))(x)
    np.testing.assert_allclose(got, want, **TIGHT)


# ---------------------------------------------------------------------------
# 2. FRN + TLU and EvoNorm-S0 against the papers' equations.
# ---------------------------------------------------------------------------

FRN_VARIANTS = {  # scale, bias, tau kinds
    "plain": (None, None, None),
    "affine": ("channel", "channel", None),
    "tlu": ("channel", "channel", "channel"),
    "tlu-only": (None, None, "channel"),
    "per-example-tlu": ("example", "example", "example"),
    "mixed-tlu": ("example", "channel", "example"),
}
FRN_CASES = [
    ("NLC", "plain"), ("NLC", "per-example-tlu"),
    ("NHWC", "tlu"), ("NHWC", "mixed-tlu"),
    ("NDHWC", "affine"),
    ("NCL", "tlu-only"), ("NCL", "per-example-tlu"),
    ("NCHW", "tlu"), ("NCHW", "plain"), ("NCHW", "mixed-tlu"),
    ("NCDHW", "per-example-tlu"),
    ("NHCW-middle", "tlu"),
    ("NC", "tlu"), ("NC", "per-example-tlu"),
]


@pytest.mark.parametrize("layout, variant", FRN_CASES, ids=[f"{a}-{b}" for a, b in FRN_CASES])
def test_frn_matches_paper(layout, variant):
    shape, channel_axis = LAYOUTS[layout]
    rng = np.random.default_rng(100 + FRN_CASES.index((layout, variant)))
    x = rng.standard_normal(shape)
    kinds = FRN_VARIANTS[variant]
    scale = _params(rng, shape, channel_axis, kinds[0], center=1.0, spread=0.5)
    bias = _params(rng, shape, channel_axis, kinds[1], spread=0.3)
    tau = _params(rng, shape, channel_axis, kinds[2], spread=0.3)
    eps = 1e-6 if len(shape) > 2 else 0.1  # (N, C): the paper's larger ε
    z = frn(x, scale, bias, tau, channel_axis=channel_axis, epsilon=eps)
    want = frn_paper(x, scale, bias, tau, channel_axis=channel_axis, eps=eps)
    assert z.shape == shape and z.dtype == jnp.float64
    np.testing.assert_allclose(z, want, **TIGHT)
    if tau is not None:  # the TLU clips somewhere and passes elsewhere
        tb = _broadcast_param(tau, shape, channel_axis)
        z = np.asarray(z)
        assert (z == tb).any() and (z > tb).any()
        assert (z >= tb).all()


def test_frn_without_spatial_axes_is_x_over_sqrt_x2_plus_eps():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 5))
    scale, bias = rng.standard_normal(5), rng.standard_normal((3, 5))
    z = jax.jit(functools.partial(jn.filter_response_norm, epsilon=0.25))(x, scale, bias)
    np.testing.assert_allclose(z, scale * x / np.sqrt(x * x + 0.25) + bias, **TIGHT)


def test_frn_default_epsilon_is_1e_6():
    x = np.array([[[1e-3], [0.0]]])  # (1, 2, 1): ν² = 5e-7, comparable to ε
    z = jax.jit(jn.filter_response_norm)(x)
    np.testing.assert_allclose(z, x / np.sqrt(5e-7 + 1e-6), **TIGHT)


S0_VARIANTS = {  # scale, bias, v kinds, num_groups
    "plain-G1": (None, None, None, 1),
    "affine-G2": ("channel", "channel", None, 2),
    "v-GC": ("channel", "channel", "channel", C),
    "v-only-G2": (None, None, "channel", 2),
    "per-example-G2": ("example", "example", "example", 2),
    "mixed-G1": ("channel", "example", "example", 1),
}
S0_CASES = [
    ("NLC", "plain-G1"), ("NLC", "per-example-G2"),
    ("NHWC", "v-GC"), ("NHWC", "mixed-G1"),
    ("NDHWC", "affine-G2"),
    ("NCL", "v-only-G2"), ("NCL", "per-example-G2"),
    ("NCHW", "v-GC"), ("NCHW", "plain-G1"), ("NCHW", "mixed-G1"),
    ("NCDHW", "per-example-G2"),
    ("NHCW-middle", "v-only-G2"),
    ("NC", "affine-G2"), ("NC", "v-GC"),
]


@pytest.mark.parametrize("layout, variant", S0_CASES, ids=[f"{a}-{b}" for a, b in S0_CASES])
def test_evonorm_s0_matches_paper(layout, variant):
    shape, channel_axis = LAYOUTS[layout]
    rng = np.random.default_rng(200 + S0_CASES.index((layout, variant)))
    # A different mean and spread per channel, so groups differ from channels.
    offsets = _broadcast_param(rng.standard_normal(C) * 2, shape, channel_axis)
    spreads = _broadcast_param(rng.uniform(0.5, 2.0, C), shape, channel_axis)
    x = offsets + spreads * rng.standard_normal(shape)
    s_kind, b_kind, v_kind, groups = S0_VARIANTS[variant]
    scale = _params(rng, shape, channel_axis, s_kind, center=1.0, spread=0.5)
    bias = _params(rng, shape, channel_axis, b_kind, spread=0.3)
    v = _params(rng, shape, channel_axis, v_kind, center=0.5, spread=1.0)
    y = s0(x, scale, bias, v, num_groups=groups, channel_axis=channel_axis)
    want = s0_paper(x, scale, bias, v, num_groups=groups, channel_axis=channel_axis)
    assert y.shape == shape and y.dtype == jnp.float64
    np.testing.assert_allclose(y, want, **TIGHT)


def test_evonorm_s0_groups_are_contiguous_channel_blocks():
    """Each num_groups gives its own (paper) answer: the grouping is not ignored."""
    rng = np.random.default_rng(22)
    shape = (2, 8, 3, 3)  # NCHW, C = 8
    x = rng.standard_normal(shape) * np.arange(1, 9)[None, :, None, None]
    v = rng.standard_normal(8)
    results = {}
    for groups in (1, 2, 4, 8):
        results[groups] = np.asarray(s0(x, None, None, v, num_groups=groups, channel_axis=1))
        want = s0_paper(x, None, None, v, num_groups=groups, channel_axis=1)
        np.testing.assert_allclose(results[groups], want, **TIGHT)
    for a, b in [(1, 2), (2, 4), (4, 8)]:
        assert np.max(np.abs(results[a] - results[b])) > 1e-2


def test_evonorm_s0_default_num_groups_is_32():
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 2, 64)) * np.linspace(0.5, 3.0, 64)
    np.testing.assert_allclose(jax.jit(jn.evonorm_s0)(x), s0_paper(x, num_groups=32), **TIGHT)


def test_evonorm_s0_v_none_means_one_and_default_epsilon():
    rng = np.random.default_rng(24)
    x = rng.standard_normal((2, 3, 4)) * 1e-3  # variance ~1e-6: ε = 1e-5 matters
    y = jax.jit(functools.partial(jn.evonorm_s0, num_groups=2))(x)
    np.testing.assert_allclose(y, s0(x, None, None, np.ones(4), num_groups=2), **TIGHT)
    np.testing.assert_allclose(y, s0_paper(x, num_groups=2, eps=1e-5), **TIGHT)


# ---------------------------------------------------------------------------
# 3. Exactness at large means (float32 inputs, float64 oracle on the same values).
# ---------------------------------------------------------------------------

LARGE_MEAN_SHAPES = {-1: (2, 6, 6, 4), 1: (2, 4, 6, 6)}


def _large_mean_input(rng, mean, channel_axis):
    x = (mean + rng.standard_normal(LARGE_MEAN_SHAPES[channel_axis])).astype(np.float32)
    x[1] *= -1  # the second example at -mean
    return x


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_frn_exact_at_large_mean_float32(channel_axis):
    rng = np.random.default_rng(31)
    x = _large_mean_input(rng, 1e4, channel_axis)
    scale, bias = rng.standard_normal((2, 4)).astype(np.float32)
    tau = np.float32([-0.5, 0.3, 2.0, -3.0])
    z = frn(x, scale, bias, tau, channel_axis=channel_axis)
    assert z.dtype == jnp.float32
    assert rel_l2(z, frn_paper(x, scale, bias, tau, channel_axis=channel_axis)) <= 1e-5
    z = frn(x, channel_axis=channel_axis)  # ≈ ±1 everywhere, to within 1e-4
    assert rel_l2(z, frn_paper(x, channel_axis=channel_axis)) <= 1e-5


@pytest.mark.parametrize("channel_axis", [-1, 1])
@pytest.mark.parametrize("mean", [1e4, 1e6])
def test_evonorm_s0_exact_at_large_mean_float32(mean, channel_axis):
    rng = np.random.default_rng(32)
    x = _large_mean_input(rng, mean, channel_axis)
    scale, bias = rng.standard_normal((2, 4)).astype(np.float32)
    v = (rng.standard_normal(4) / mean).astype(np.float32)  # v·x of order 1
    for groups in (1, 2):
        y = s0(x, scale, bias, v, num_groups=groups, channel_axis=channel_axis)
        assert y.dtype == jnp.float32
        want = s0_paper(x, scale, bias, v, num_groups=groups, channel_axis=channel_axis)
        assert rel_l2(y, want) <= 1e-5
        y = s0(x, num_groups=groups, channel_axis=channel_axis)  # v = 1: σ(v·x) ∈ {0, 1}
        want = s0_paper(x, num_groups=groups, channel_axis=channel_axis)
        assert rel_l2(y, want) <= 1e-5


def test_lrn_exact_at_large_mean_float32():
    rng = np.random.default_rng(33)
    x = (1e4 + rng.standard_normal((2, 6, 3, 3))).astype(np.float32)
    x[1] *= -1
    y = lrn(x, size=3, alpha=1.0, beta=0.75, k=1.0, channel_axis=1)
    assert y.dtype == jnp.float32
    want = torch_lrn(x, size=3, alpha=1.0, beta=0.75, k=1.0, channel_axis=1)
    assert rel_l2(y, want) <= 1e-5


# ---------------------------------------------------------------------------
# 4. Transformations.
# ---------------------------------------------------------------------------

LRN_ARGS = dict(size=3, alpha=1.0, beta=0.75, k=1.0)


def test_jit_equals_eager():
    """The literal (eager) calls against the compiled ones the other tests use."""
    rng = np.random.default_rng(41)
    shape, channel_axis = (2, 4, 3, 4), 1
    x = rng.standard_normal(shape)
    s, b, t = _three_params(rng, shape, channel_axis, "channel")
    np.testing.assert_allclose(frn(x, s, b, t, channel_axis=channel_axis),
                               jn.filter_response_norm(x, s, b, t, channel_axis=channel_axis), **TIGHT)
    s, b, v = _three_params(rng, shape, channel_axis, "example")
    np.testing.assert_allclose(s0(x, s, b, v, num_groups=2, channel_axis=channel_axis),
                               jn.evonorm_s0(x, s, b, v, num_groups=2, channel_axis=channel_axis), **TIGHT)
    np.testing.assert_allclose(lrn(x, channel_axis=channel_axis, **LRN_ARGS),
                               jn.local_response_norm(x, channel_axis=channel_axis, **LRN_ARGS), **TIGHT)


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_vmap_over_extra_leading_axis_equals_loop(channel_axis):
    rng = np.random.default_rng(42)
    inner = (2, 3, 3, 4) if channel_axis == -1 else (2, 4, 3, 3)
    xs = rng.standard_normal((3,) + inner)
    s, b, t = _three_params(rng, inner, channel_axis, "channel")
    # Per-example parameters, one set per vmapped element (e.g. a conditioning).
    ss, bs, ts = (np.stack(p) for p in zip(*(_three_params(rng, inner, channel_axis, "example")
                                              for _ in range(3)), strict=True))
    for f in (functools.partial(frn, channel_axis=channel_axis),
              functools.partial(s0, num_groups=2, channel_axis=channel_axis)):
        batched = jax.vmap(f, in_axes=(0, None, None, None))(xs, s, b, t)
        looped = np.stack([f(x, s, b, t) for x in xs])
        np.testing.assert_allclose(batched, looped, **TIGHT)
        batched = jax.vmap(f)(xs, ss, bs, ts)
        looped = np.stack([f(*args) for args in zip(xs, ss, bs, ts, strict=True)])
        np.testing.assert_allclose(batched, looped, **TIGHT)
    f = functools.partial(lrn, channel_axis=channel_axis, **LRN_ARGS)
    np.testing.assert_allclose(jax.vmap(f)(xs), np.stack([f(x) for x in xs]), **TIGHT)


def _untied_tau(rng, x, scale, bias, channel_axis, kind, margin=0.05):
    """A tau whose TLU clips some entries and has none within ``margin`` of its threshold."""
    y = frn_paper(x, scale, bias, channel_axis=channel_axis)
    for _ in range(500):
        tau = _params(rng, x.shape, channel_axis, kind, spread=0.5)
        tb = _broadcast_param(tau, x.shape, channel_axis)
        if np.abs(y - tb).min() > margin and (y < tb).any() and (y > tb).any():
            return tau
    raise AssertionError("no untied tau found")


GRAD_CHECK = dict(order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


def test_frn_check_grads_order2():
    """w.r.t. x, scale, bias and tau (per channel, NCHW), the TLU without ties."""
    shape, channel_axis, kind = (2, 3, 2, 2), 1, "channel"
    rng = np.random.default_rng(43)
    x = rng.standard_normal(shape)
    scale = _params(rng, shape, channel_axis, kind, center=1.0, spread=0.5)
    bias = _params(rng, shape, channel_axis, kind, spread=0.3)
    tau = _untied_tau(rng, x, scale, bias, channel_axis, kind)
    f = jax.jit(lambda x, s, b, t: jn.filter_response_norm(x, s, b, t, channel_axis=channel_axis))
    check_grads(f, (x, scale, bias, tau), **GRAD_CHECK)
    # The tau derivative counts the entries the TLU clips.
    gt = jax.grad(lambda t: jnp.sum(f(x, scale, bias, t)))(tau)
    clipped = frn_paper(x, scale, bias, channel_axis=channel_axis) < _broadcast_param(tau, shape, channel_axis)
    np.testing.assert_array_equal(gt, clipped.sum(axis=(0, 2, 3)))


def test_evonorm_s0_check_grads_order2():
    """w.r.t. x, scale, bias and v (per example)."""
    rng = np.random.default_rng(44)
    shape = (2, 3, 4)
    x = rng.standard_normal(shape)
    scale, bias, v = _three_params(rng, shape, -1, "example")
    f = jax.jit(lambda x, s, b, v: jn.evonorm_s0(x, s, b, v, num_groups=2))
    check_grads(f, (x, scale, bias, v), **GRAD_CHECK)


def test_lrn_check_grads_order2():
    rng = np.random.default_rng(46)
    x = rng.standard_normal((2, 5, 3))
    f = jax.jit(lambda x: jn.local_response_norm(x, size=4, alpha=2.0, beta=0.75, k=1.0, channel_axis=1))
    check_grads(f, (x,), **GRAD_CHECK)


def _central_differences(fun, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


FD = dict(rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["channel", "example"])
def test_frn_gradients_match_paper_finite_differences(kind):
    """Reverse-mode gradients (x, scale, bias, tau) against central differences of the transcription."""
    rng = np.random.default_rng(45)
    x = rng.standard_normal((2, 3, 4))
    cot = rng.standard_normal(x.shape)
    s, b, _ = _three_params(rng, x.shape, -1, kind)
    t = _untied_tau(rng, x, s, b, -1, kind)
    gx, gs, gb, gt = grads_of_sum(jn.filter_response_norm, x, s, b, t, cot)
    loss = lambda x=x, s=s, b=b, t=t: np.sum(frn_paper(x, s, b, t) * cot)  # noqa: E731
    np.testing.assert_allclose(gx, _central_differences(lambda x: loss(x=x), x), **FD)
    np.testing.assert_allclose(gs, _central_differences(lambda s: loss(s=s), s), **FD)
    np.testing.assert_allclose(gb, _central_differences(lambda b: loss(b=b), b), **FD)
    np.testing.assert_allclose(gt, _central_differences(lambda t: loss(t=t), t), **FD)
    assert np.abs(np.asarray(gt)).max() > 0  # the TLU is active


@pytest.mark.parametrize("kind", ["channel", "example"])
def test_evonorm_s0_gradients_match_paper_finite_differences(kind):
    """Reverse-mode gradients (x, scale, bias, v) against central differences of the transcription."""
    rng = np.random.default_rng(46)
    x = rng.standard_normal((2, 3, 4))
    cot = rng.standard_normal(x.shape)
    s, b, v = _three_params(rng, x.shape, -1, kind)
    grads = grads_of_sum(jn.evonorm_s0, x, s, b, v, cot, num_groups=2)
    loss = lambda x=x, s=s, b=b, v=v: np.sum(s0_paper(x, s, b, v, num_groups=2) * cot)  # noqa: E731
    for name, got, at in zip("xsbv", grads, (x, s, b, v), strict=True):
        want = _central_differences(lambda p, name=name: loss(**{name: p}), at)
        np.testing.assert_allclose(got, want, **FD, err_msg=name)


@pytest.mark.parametrize("value", [0.0, 3.25])
def test_constant_input_finite_outputs_and_gradients(value):
    rng = np.random.default_rng(47)
    shape = (2, 3, 3, 4)
    x = np.full(shape, value)
    cot = rng.standard_normal(shape)
    s, b, t = _three_params(rng, shape, -1, "channel")

    np.testing.assert_allclose(frn(x, s, b, t), frn_paper(x, s, b, t), **TIGHT)
    grads = grads_of_sum(jn.filter_response_norm, x, s, b, t, cot)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)

    np.testing.assert_allclose(s0(x, s, b, t, num_groups=2), s0_paper(x, s, b, t, num_groups=2), **TIGHT)
    grads = grads_of_sum(jn.evonorm_s0, x, s, b, t, cot, num_groups=2)  # t as v
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # The group variance is stationary at a constant, so
    # dy_i/dx_j = δ_ij γ (σ(vx) + vx σ'(vx)) / sqrt(ε).
    sig = _sigmoid(t * value)
    want_dx = cot * s * (sig + t * value * sig * (1 - sig)) / np.sqrt(1e-5)
    np.testing.assert_allclose(grads[0], want_dx, rtol=1e-10, atol=1e-10)
    _, jvp = jax.jvp(lambda x: s0(x, s, b, t, num_groups=2), (x,), (cot,))  # forward mode too
    np.testing.assert_allclose(jvp, want_dx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("beta, k", [(0.75, 1.0), (1.5, 2.0)])
def test_lrn_at_zero_is_finite_with_gradient_k_to_minus_beta(beta, k):
    x = np.zeros((2, 5, 3))
    y, g = lrn_value_and_grad(x, np.ones_like(x), size=3, alpha=1.0, beta=beta, k=k, channel_axis=1)
    np.testing.assert_array_equal(y, 0.0)
    np.testing.assert_allclose(g, np.full(x.shape, k ** -beta), **TIGHT)


# ---------------------------------------------------------------------------
# 5. bfloat16.
# ---------------------------------------------------------------------------


def _assert_bf16_rounds_f32(y16, y32):
    assert y16.dtype == jnp.bfloat16
    # One rounding of the float32 result: at most half an ulp (2^-8 relative).
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), rtol=2.0**-8 + 1e-5, atol=1e-6)


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_bfloat16_output_is_rounded_float32_result(channel_axis):
    rng = np.random.default_rng(51)
    shape = (2, 32, 32, 4) if channel_axis == -1 else (2, 4, 32, 32)  # 1024 entries per set
    x16 = jnp.asarray(3.0 + rng.standard_normal(shape), jnp.bfloat16)
    x32 = x16.astype(jnp.float32)
    s, b, t = (jnp.asarray(p, jnp.bfloat16) for p in _three_params(rng, shape, channel_axis, "channel"))
    s32, b32, t32 = (p.astype(jnp.float32) for p in (s, b, t))

    _assert_bf16_rounds_f32(frn(x16, s, b, t, channel_axis=channel_axis),
                            frn(x32, s32, b32, t32, channel_axis=channel_axis))
    y32 = s0(x32, s32, b32, t32, num_groups=2, channel_axis=channel_axis)
    _assert_bf16_rounds_f32(s0(x16, s, b, t, num_groups=2, channel_axis=channel_axis), y32)
    np.testing.assert_allclose(y32, s0_paper(x32, s32, b32, t32, num_groups=2, channel_axis=channel_axis),
                               rtol=1e-5, atol=1e-5)
    settings = dict(size=5, alpha=1.0, beta=0.75, k=1.0, channel_axis=channel_axis)
    _assert_bf16_rounds_f32(lrn(x16, **settings), lrn(x32, **settings))


# ---------------------------------------------------------------------------
# 6. Errors at trace time (eagerly and under jit).
# ---------------------------------------------------------------------------

X_SHAPE = (2, 3, 3, 8)  # NHWC, C = 8, N = 2
ERR_FUNCS = {
    "local_response_norm": jn.local_response_norm,
    "filter_response_norm": jn.filter_response_norm,
    "evonorm_s0": jn.evonorm_s0,
}


def err(name, kwargs, exc, message, *, id, shape=X_SHAPE, dtype=jnp.float32):
    """``ERR_FUNCS[name](ones(shape, dtype), **kwargs)`` raises ``exc`` matching ``^name: message``."""
    return pytest.param(name, shape, dtype, kwargs, exc, rf"^{name}: {message}", id=f"{name}-{id}")


LRN_NAME, FRN_NAME, S0_NAME = ERR_FUNCS
SHAPE_OF = r"must have shape .*for an input of shape \(2, 3, 3, 8\), got shape "
LRN_ERRORS = [
    err(LRN_NAME, dict(size=0), ValueError, r"size must be a positive int, got size=0;", id="size0"),
    err(LRN_NAME, dict(size=-3), ValueError, r"size must be a positive int, got size=-3;", id="size-neg"),
    err(LRN_NAME, dict(size=2.0), TypeError, r"size must be a positive int, got 2\.0 of type float", id="size-float"),
    err(LRN_NAME, dict(size=True), TypeError, r"size must be a positive int, got True of type bool", id="size-bool"),
    err(LRN_NAME, dict(size="5"), TypeError, r"size must be a positive int, got '5' of type str", id="size-str"),
    err(LRN_NAME, dict(k=0.0), ValueError, r"k must be a finite number > 0, got k=0\.0", id="k0"),
    err(LRN_NAME, dict(k=-1), ValueError, r"k must be a finite number > 0, got k=-1\.0", id="k-neg"),
    err(LRN_NAME, dict(k=float("inf")), ValueError, r"k must be a finite number > 0, got k=inf", id="k-inf"),
    err(LRN_NAME, dict(k=True), TypeError, r"k must be a Python number, got True of type bool", id="k-bool"),
    err(LRN_NAME, dict(alpha=float("nan")), ValueError, r"alpha must be a finite number, got alpha=nan", id="alpha-nan"),
    err(LRN_NAME, dict(alpha=-np.inf), ValueError, r"alpha must be a finite number, got alpha=-inf", id="alpha-inf"),
    err(LRN_NAME, dict(alpha="1e-4"), TypeError, r"alpha must be a Python number, got '1e-4' of type str", id="alpha-str"),
    err(LRN_NAME, dict(alpha=jnp.array(1e-4)), TypeError, r"alpha must be a Python number", id="alpha-array"),
    err(LRN_NAME, dict(beta=float("inf")), ValueError, r"beta must be a finite number, got beta=inf", id="beta-inf"),
    err(LRN_NAME, dict(beta=None), TypeError, r"beta must be a Python number, got None", id="beta-none"),
    err(LRN_NAME, {}, TypeError, r"expected a floating-point input, got dtype int32", dtype=jnp.int32, id="int32"),
    err(LRN_NAME, {}, TypeError, r"expected a floating-point input, got dtype bool", dtype=jnp.bool_, id="bool"),
    err(LRN_NAME, {}, ValueError, r"expected an input of rank >= 1 .*got shape \(\) of rank 0", shape=(), id="scalar"),
    err(LRN_NAME, dict(channel_axis=4), ValueError,
        r"channel_axis=4 is out of range for an input of rank 4 .*\[-4, 3\]", id="axis4"),
    err(LRN_NAME, dict(channel_axis=-5), ValueError, r"channel_axis=-5 is out of range .*\[-4, 3\]", id="axis-5"),
    err(LRN_NAME, dict(channel_axis=1), ValueError, r"channel_axis=1 is out of range .*rank 1 .*\[-1, 0\]",
        shape=(8,), id="rank1-axis1"),
    err(LRN_NAME, dict(channel_axis=1.0), TypeError, r"channel_axis must be an int", id="axis-float"),
]
FRN_ERRORS = [
    err(FRN_NAME, {}, ValueError, r"expected an input of rank >= 2 .*got shape \(8,\) of rank 1", shape=(8,), id="rank1"),
    err(FRN_NAME, {}, ValueError, r"expected an input of rank >= 2 .*got shape \(\) of rank 0", shape=(), id="rank0"),
    err(FRN_NAME, dict(channel_axis=0), ValueError, r"channel_axis=0 is the batch axis", id="axis0"),
    err(FRN_NAME, dict(channel_axis=-4), ValueError, r"channel_axis=-4 is the batch axis", id="axis-4"),
    err(FRN_NAME, dict(channel_axis=0), ValueError, r"channel_axis=0 is the batch axis", shape=(2, 8), id="NC-axis0"),
    err(FRN_NAME, dict(channel_axis=4), ValueError, r"channel_axis=4 is out of range", id="axis4"),
    err(FRN_NAME, dict(scale=jnp.ones(9)), ValueError,
        r"scale must have shape \(8,\) \(per channel\) or \(2, 8\) \(per example\).*got shape \(9,\)", id="scale-C+1"),
    err(FRN_NAME, dict(scale=jnp.ones((1, 8))), ValueError, r"scale " + SHAPE_OF + r"\(1, 8\)", id="scale-1C"),
    err(FRN_NAME, dict(bias=jnp.ones((8, 1, 1))), ValueError, r"bias " + SHAPE_OF + r"\(8, 1, 1\)", id="bias-C11"),
    err(FRN_NAME, dict(bias=jnp.ones((2, 1, 1, 8))), ValueError, r"bias " + SHAPE_OF + r"\(2, 1, 1, 8\)",
        id="bias-N11C"),
    err(FRN_NAME, dict(tau=jnp.ones(9)), ValueError, r"tau " + SHAPE_OF + r"\(9,\)", id="tau-C+1"),
    err(FRN_NAME, dict(tau=jnp.ones((1, 8))), ValueError, r"tau " + SHAPE_OF + r"\(1, 8\)", id="tau-1C"),
    err(FRN_NAME, dict(tau=jnp.ones((3, 8))), ValueError, r"tau " + SHAPE_OF + r"\(3, 8\)", id="tau-wrongN"),
    err(FRN_NAME, dict(tau=0.0), ValueError, r"tau " + SHAPE_OF + r"\(\)", id="tau-scalar"),
    err(FRN_NAME, dict(tau=jnp.ones(8, jnp.int32)), TypeError, r"tau must be floating point, got dtype int32",
        id="tau-int"),
    err(FRN_NAME, dict(scale=jnp.ones(8, jnp.int32)), TypeError, r"scale must be floating point", id="scale-int"),
    err(FRN_NAME, {}, TypeError, r"expected a floating-point input, got dtype int32", dtype=jnp.int32, id="int32"),
    err(FRN_NAME, dict(epsilon=-1.0), ValueError, r"epsilon must be a finite number >= 0", id="eps-neg"),
]
S0_ERRORS = [
    err(S0_NAME, dict(num_groups=3), ValueError,
        r"8 channels cannot be split into num_groups=3 groups .*choose num_groups dividing 8", id="groups3"),
    err(S0_NAME, dict(num_groups=16), ValueError, r"8 channels cannot be split into num_groups=16 groups",
        id="groups16"),
    err(S0_NAME, {}, ValueError, r"8 channels cannot be split into num_groups=32 groups", id="default-groups"),
    err(S0_NAME, dict(num_groups=2, channel_axis=1), ValueError,
        r"3 channels cannot be split into num_groups=2 .*channel_axis=1", shape=(2, 3, 4, 4), id="nchw-groups2-C3"),
    err(S0_NAME, dict(num_groups=0), ValueError, r"num_groups must be a positive int, got num_groups=0", id="groups0"),
    err(S0_NAME, dict(num_groups=-2), ValueError, r"num_groups must be a positive int, got num_groups=-2",
        id="groups-neg"),
    err(S0_NAME, dict(num_groups=2.0), TypeError, r"num_groups must be a positive int, got 2\.0 of type float",
        id="groups-float"),
    err(S0_NAME, dict(num_groups=2, v=jnp.ones(9)), ValueError,
        r"v must have shape \(8,\) \(per channel\) or \(2, 8\) \(per example\).*got shape \(9,\)", id="v-C+1"),
    err(S0_NAME, dict(num_groups=2, v=jnp.ones((1, 8))), ValueError, r"v " + SHAPE_OF + r"\(1, 8\)", id="v-1C"),
    err(S0_NAME, dict(num_groups=2, v=jnp.ones((8, 1))), ValueError, r"v " + SHAPE_OF + r"\(8, 1\)", id="v-C1"),
    err(S0_NAME, dict(num_groups=2, v=jnp.ones(8, jnp.int32)), TypeError, r"v must be floating point", id="v-int"),
    err(S0_NAME, dict(num_groups=2, scale=jnp.ones(4)), ValueError, r"scale " + SHAPE_OF + r"\(4,\)", id="scale"),
    err(S0_NAME, dict(num_groups=2, channel_axis=0), ValueError, r"channel_axis=0 is the batch axis", id="axis0"),
    err(S0_NAME, dict(num_groups=2), TypeError, r"expected a floating-point input, got dtype int32",
        dtype=jnp.int32, id="int32"),
    err(S0_NAME, dict(num_groups=1), ValueError, r"expected an input of rank >= 2 ", shape=(8,), id="rank1"),
]


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("name, shape, dtype, kwargs, exc, match", LRN_ERRORS + FRN_ERRORS + S0_ERRORS)
def test_errors_at_trace_time(name, shape, dtype, kwargs, exc, match, mode):
    fn = ERR_FUNCS[name]
    x = jnp.ones(shape, dtype)
    call = lambda x: fn(x, **kwargs)  # noqa: E731  (settings and parameters closed over)
    with pytest.raises(exc, match=match):
        jax.block_until_ready(call(x) if mode == "eager" else jax.jit(call)(x))


def test_errors_with_parameters_as_jit_arguments():
    """Wrong parameter shapes are caught when the parameters are traced as well."""
    x = jnp.ones(X_SHAPE)
    with pytest.raises(ValueError, match=r"^filter_response_norm: tau " + SHAPE_OF + r"\(9,\)"):
        jax.jit(jn.filter_response_norm)(x, None, None, jnp.ones(9))
    with pytest.raises(ValueError, match=r"^filter_response_norm: scale " + SHAPE_OF + r"\(1, 8\)"):
        jax.jit(jn.filter_response_norm)(x, jnp.ones((1, 8)))
    with pytest.raises(ValueError, match=r"^evonorm_s0: v " + SHAPE_OF + r"\(3, 8\)"):
        jax.jit(lambda x, v: jn.evonorm_s0(x, None, None, v, num_groups=2))(x, jnp.ones((3, 8)))
