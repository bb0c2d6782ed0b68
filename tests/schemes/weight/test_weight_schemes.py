"""Weight schemes: weight_norm, spectral_norm and weight_standardize.

* PyTorch (CPU, float64) is the oracle for Weight Normalization
  (``torch.nn.utils.parametrizations.weight_norm``) and for Spectral
  Normalization: the legacy ``torch.nn.utils.spectral_norm`` runs the paper's
  Algorithm 1 exactly as jaxnorm does (``v = N(Wᵀu), u = N(Wv)``, then
  ``σ = uᵀWv``), so weights, updated ``u`` and gradients must agree to
  rounding. The newer ``parametrizations.spectral_norm`` orders its loop the
  other way round (``u = N(Wv), v = N(Wᵀu)``), so only its ``u`` sequence is
  the same; its weight agrees once the iteration has converged.
  Both layouts are checked: PyTorch's ``(out, in, ...)`` with
  ``feature_axis=0`` on the same array, and Flax's ``(in, out)`` /
  ``(H, W, in, out)`` with ``feature_axis=-1`` on the transposed array.
* Weight Standardization is compared with a float64 NumPy transcription of
  the paper's eq. 5, written here one output feature at a time.
* Degenerate (zero) kernels, jit/vmap, derivatives of every order, reduced
  precision dtypes and the argument checks follow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads
from torch.nn.utils import parametrizations

import jaxnorm as jn

TOL64 = dict(rtol=1e-12, atol=1e-12)
OUT = 4  # output features of every torch module below
# torch module (bias-free, float64) -> (its constructor, the shape of an input for its forward)
MODULES = {
    "linear": (lambda: torch.nn.Linear(5, OUT, bias=False, dtype=torch.float64), (2, 5)),
    "conv": (lambda: torch.nn.Conv2d(3, OUT, (2, 3), bias=False, dtype=torch.float64), (1, 3, 4, 5)),
}


# Jitted entry points (one compilation per shape and setting instead of one per
# primitive); test_jit_equals_eager and the error tests call jaxnorm directly.
_wn = jax.jit(jn.weight_norm, static_argnames=("feature_axis", "exponential"))
_sn = jax.jit(jn.spectral_norm, static_argnames=("n_iterations", "epsilon", "feature_axis"))
_sn_init = jax.jit(jn.spectral_norm_init, static_argnames=("n_iterations", "epsilon", "feature_axis"))
_ws = jax.jit(jn.weight_standardize, static_argnames=("feature_axis", "epsilon"))

# ----------------------------------------------------------------- helpers


def _t(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def _to_layout(a, layout):
    """A torch-layout ``(out, in, ...)`` array in ``layout``, and its feature axis."""
    if layout == "torch":
        return a, 0
    return np.transpose(a, (1, 0) if a.ndim == 2 else (2, 3, 1, 0)), -1


def _from_layout(a, layout):
    """Back from ``layout`` to torch's ``(out, in, ...)``."""
    a = np.asarray(a)
    if layout == "torch":
        return a
    return np.transpose(a, (1, 0) if a.ndim == 2 else (3, 2, 0, 1))


def _matrix(w, feature_axis):
    """The paper's ``W``: ``(features, rest)``."""
    w = np.asarray(w, dtype=np.float64)
    return np.moveaxis(w, feature_axis, 0).reshape(w.shape[feature_axis], -1)


def _np_power_iteration(mat, u, n, eps=1e-12):
    """Algorithm 1 of Miyato et al. in float64 NumPy: ``n`` times v = N(Wᵀu), u = N(Wv)."""

    def normalize(t):
        return t / max(np.linalg.norm(t), eps)

    u = np.asarray(u, dtype=np.float64)
    for _ in range(n):
        v = normalize(mat.T @ u)
        u = normalize(mat @ v)
    return u, v


def _ws_reference(w, feature_axis, eps):
    """Qiao et al. eq. 5 in float64, one output feature at a time."""
    w = np.asarray(w, dtype=np.float64)
    out = np.empty_like(w)
    for f in range(w.shape[feature_axis]):
        index = [slice(None)] * w.ndim
        index[feature_axis] = f
        s = w[tuple(index)]
        count = s.size
        mu = s.sum() / count
        var = ((s - mu) ** 2).sum() / count  # biased
        out[tuple(index)] = (s - mu) / np.sqrt(var + eps)
    return out


def _spectral_gap_matrix(rng, rows, cols, top=(3.0, 1.0)):
    """A ``(rows, cols)`` matrix with singular values ``top`` then smaller ones."""
    k = min(rows, cols)
    s = np.concatenate([top, np.linspace(0.5, 0.1, k - len(top))])
    q1, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    q2, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (q1 * s) @ q2.T


def _finite(*trees):
    for tree in trees:
        for leaf in jax.tree_util.tree_leaves(tree):
            assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64)))


# ----------------------------------------------------- PyTorch: weight norm


@pytest.mark.parametrize("module", sorted(MODULES))
@pytest.mark.parametrize("dim", [0, None])
def test_weight_norm_matches_torch(module, dim):
    """Both layouts, and both parameterizations (g, and log g with exponential=True)."""
    rng = np.random.default_rng(10)
    make, _ = MODULES[module]
    m = make()
    parametrizations.weight_norm(m, dim=dim)
    p = m.parametrizations.weight
    v = rng.standard_normal(tuple(p.original1.shape))
    g_shape = (OUT,) if dim == 0 else ()
    g = rng.uniform(0.5, 2.0, g_shape)
    c = rng.standard_normal(v.shape)
    with torch.no_grad():
        p.original0.copy_(_t(g).reshape(p.original0.shape))
        p.original1.copy_(_t(v))
    w_torch = m.weight
    (w_torch * _t(c)).sum().backward()
    w_torch = w_torch.detach().numpy()
    grad_v_torch = p.original1.grad.numpy()
    grad_g_torch = p.original0.grad.numpy().reshape(g_shape)

    layouts = {layout: _to_layout(v, layout) for layout in ("torch", "flax")}
    weights = {layout: _to_layout(c, layout)[0] for layout in layouts}

    @jax.jit
    def ours(g, log_g):
        out = {}
        for layout, (v_l, axis) in layouts.items():
            for exponential, gain in ((False, g), (True, log_g)):

                def loss(v, gain, layout=layout, axis=axis, exponential=exponential):
                    w = jn.weight_norm(v, gain, feature_axis=None if dim is None else axis, exponential=exponential)
                    return jnp.sum(w * weights[layout]), w

                (_, w), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(v_l, gain)
                out[layout, exponential] = (w, *grads)
        return out

    for (layout, exponential), (w, grad_v, grad_g) in ours(g, np.log(g)).items():
        assert w.shape == layouts[layout][0].shape and grad_g.shape == g_shape
        np.testing.assert_allclose(_from_layout(w, layout), w_torch, **TOL64)
        np.testing.assert_allclose(_from_layout(grad_v, layout), grad_v_torch, **TOL64)
        # d/d(log g) = g · d/dg
        np.testing.assert_allclose(grad_g, grad_g_torch * g if exponential else grad_g_torch, **TOL64)


# --------------------------------------------------- PyTorch: spectral norm


@pytest.mark.parametrize("module", sorted(MODULES))
@pytest.mark.parametrize("n_iterations", [1, 3])
def test_spectral_norm_matches_legacy_torch(module, n_iterations):
    """Both layouts against torch.nn.utils.spectral_norm in training mode."""
    rng = np.random.default_rng(20 + n_iterations)
    make, x_shape = MODULES[module]
    m = make()
    torch.nn.utils.spectral_norm(m, n_power_iterations=n_iterations)
    w = rng.standard_normal(tuple(m.weight_orig.shape))
    u0 = 3.0 * rng.standard_normal(OUT)  # need not be a unit vector
    c = rng.standard_normal(w.shape)
    with torch.no_grad():
        m.weight_orig.copy_(_t(w))
        m.weight_u.copy_(_t(u0))
    m.train()
    m(torch.zeros(x_shape, dtype=torch.float64))  # the pre-hook runs the iteration
    w_torch = m.weight
    u_torch = m.weight_u.detach().numpy().copy()
    (w_torch * _t(c)).sum().backward()
    w_torch = w_torch.detach().numpy()
    grad_torch = m.weight_orig.grad.numpy()

    @jax.jit
    def ours(u):
        out = {}
        for layout in ("torch", "flax"):
            w_l, axis = _to_layout(w, layout)
            c_l = _to_layout(c, layout)[0]

            def loss(w, axis=axis, c_l=c_l):
                w_sn, u_new = jn.spectral_norm(w, u, n_iterations=n_iterations, feature_axis=axis)
                return jnp.sum(w_sn * c_l), (w_sn, u_new)

            (_, (w_sn, u_new)), grad = jax.value_and_grad(loss, has_aux=True)(w_l)
            out[layout] = (w_sn, u_new, grad)
        return out

    for layout, (w_sn, u_new, grad) in ours(u0).items():
        assert u_new.shape == (OUT,)
        np.testing.assert_allclose(_from_layout(w_sn, layout), w_torch, **TOL64)
        np.testing.assert_allclose(u_new, u_torch, **TOL64)
        np.testing.assert_allclose(_from_layout(grad, layout), grad_torch, **TOL64)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_spectral_norm_u_sequence_matches_torch_parametrization(module):
    """torch's loop is u = N(Wv), v = N(Wᵀu): from v = N(Wᵀu0) its u's are ours."""
    rng = np.random.default_rng(30)
    make, _ = MODULES[module]
    n_iterations = 3
    m = make()
    parametrizations.spectral_norm(m, n_power_iterations=n_iterations)
    sn = m.parametrizations.weight[0]
    w = rng.standard_normal(tuple(m.parametrizations.weight.original.shape))
    u0 = rng.standard_normal(OUT)
    v0 = _matrix(w, 0).T @ u0
    with torch.no_grad():
        m.parametrizations.weight.original.copy_(_t(w))
        sn._v.copy_(_t(v0 / np.linalg.norm(v0)))
        sn._u.copy_(_t(rng.standard_normal(OUT)))  # overwritten by the first step
    m.train()
    w_torch = m.weight.detach().numpy()  # one access runs n_iterations steps
    layout = "torch" if module == "linear" else "flax"  # both layouts: the legacy test
    w_ours, axis = _to_layout(w, layout)
    w_sn, u_new = _sn(w_ours, u0, n_iterations=n_iterations, feature_axis=axis)
    np.testing.assert_allclose(u_new, sn._u.numpy(), **TOL64)
    # torch's σ takes one more half step, v' = N(Wᵀu), from our u: σ' = uᵀ W v'
    mat = _matrix(w, 0)
    v_next = mat.T @ np.asarray(u_new)
    v_next /= np.linalg.norm(v_next)
    np.testing.assert_allclose(w_torch, w / (np.asarray(u_new) @ mat @ v_next), **TOL64)
    assert not np.allclose(_from_layout(w_sn, layout), w_torch, rtol=1e-6, atol=0)  # not yet converged


@pytest.mark.parametrize("module", sorted(MODULES))
def test_spectral_norm_weight_matches_torch_parametrization_when_converged(module):
    rng = np.random.default_rng(40)
    make, _ = MODULES[module]
    m = make()
    parametrizations.spectral_norm(m, n_power_iterations=100)
    shape = tuple(m.parametrizations.weight.original.shape)
    w = _spectral_gap_matrix(rng, OUT, int(np.prod(shape[1:]))).reshape(shape)
    u0 = rng.standard_normal(OUT)
    v0 = _matrix(w, 0).T @ u0
    sn = m.parametrizations.weight[0]
    with torch.no_grad():
        m.parametrizations.weight.original.copy_(_t(w))
        sn._v.copy_(_t(v0 / np.linalg.norm(v0)))
    m.train()
    w_torch = m.weight.detach().numpy()
    layout = "torch" if module == "linear" else "flax"
    w_ours, axis = _to_layout(w, layout)
    w_sn, _ = _sn(w_ours, u0, n_iterations=100, feature_axis=axis)
    np.testing.assert_allclose(_from_layout(w_sn, layout), w_torch, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, shape, axis", [(np.float32, (3, 3, 2, 5), -1), (np.float64, (6, 9), 0)])
def test_spectral_norm_sigma_is_top_singular_value(dtype, shape, axis):
    rng = np.random.default_rng(50)
    w = jnp.asarray(rng.standard_normal(shape), dtype)
    u = _sn_init(jax.random.key(1), w, n_iterations=200, feature_axis=axis)
    assert u.dtype == dtype and u.shape == (shape[axis],)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u, np.float64)), 1.0, rtol=1e-6)
    w_sn, _ = _sn(w, u, feature_axis=axis)
    assert w_sn.dtype == dtype
    top = np.linalg.svd(_matrix(w, axis), compute_uv=False)[0]
    sigma = np.mean(np.asarray(w, np.float64) / np.asarray(w_sn, np.float64))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(sigma, top, rtol=rtol)
    np.testing.assert_allclose(np.linalg.svd(_matrix(w_sn, axis), compute_uv=False)[0], 1.0, rtol=rtol)


def test_spectral_norm_init_is_power_steps_from_a_normal_draw():
    w = np.random.default_rng(51).standard_normal((4, 3, 5))
    key = jax.random.key(7)
    draw = np.asarray(jax.random.normal(key, (5,), jnp.float64))
    u0 = _sn_init(key, w, n_iterations=0)  # 0 steps allowed: the normalized draw
    np.testing.assert_allclose(u0, draw / np.linalg.norm(draw), **TOL64)
    u3 = _sn_init(key, w, n_iterations=3)
    np.testing.assert_allclose(u3, _np_power_iteration(_matrix(w, -1), u0, 3)[0], **TOL64)


# ------------------------------------------------- weight standardization


@pytest.mark.parametrize(
    "shape, axis, epsilon",
    [((3, 3, 4, 5), -1, 1e-5), ((5, 4, 3, 3), 0, 0.3), ((6, 5), -1, 1e-5), ((3, 5, 4), 1, 0.3)],
    ids=["HWIO", "OIHW", "dense", "middle"],
)
def test_weight_standardize_matches_paper_equation(shape, axis, epsilon):
    rng = np.random.default_rng(60)
    w = rng.normal(0.7, 2.0, shape)
    got = _ws(w, feature_axis=axis, epsilon=epsilon)
    assert got.shape == shape and got.dtype == jnp.float64
    np.testing.assert_allclose(got, _ws_reference(w, axis, epsilon), **TOL64)


def test_weight_standardize_default_epsilon_is_1e_5():
    w = np.random.default_rng(61).standard_normal((2, 2, 3, 4)) * 1e-3  # var ~ ε: ε matters
    np.testing.assert_allclose(_ws(w), _ws_reference(w, -1, 1e-5), **TOL64)


@pytest.mark.parametrize("mean", [1e4, 1e6])
@pytest.mark.parametrize("shape, axis", [((3, 3, 8, 4), -1), ((4, 8, 3, 3), 0)])
def test_weight_standardize_large_mean_float32(mean, shape, axis):
    rng = np.random.default_rng(62)
    w = (mean + rng.standard_normal(shape)).astype(np.float32)
    got = np.asarray(_ws(jnp.asarray(w), feature_axis=axis))
    assert got.dtype == np.float32
    want = _ws_reference(w, axis, 1e-5)  # the same float32 values, in float64
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5


# ------------------------------------------------------- degenerate kernels

SHAPE = (2, 3, 4)  # feature_axis=-1: 4 features of 6 entries
ZERO_FEATURE = 1


def _scheme(name, w):
    g = jnp.asarray(np.linspace(0.5, 2.0, SHAPE[-1]))
    if name == "weight_norm":
        return jn.weight_norm(w, g)
    if name == "weight_norm_exp":
        return jn.weight_norm(w, g, exponential=True)
    if name == "weight_norm_whole":
        return jn.weight_norm(w, jnp.float64(1.5), feature_axis=None)
    if name == "spectral_norm":
        return jn.spectral_norm(w, jnp.asarray([1.0, -2.0, 0.5, 1.0]), n_iterations=2)[0]
    assert name == "weight_standardize"
    return jn.weight_standardize(w)


SCHEMES = ["weight_norm", "weight_norm_exp", "weight_norm_whole", "spectral_norm", "weight_standardize"]


@functools.cache
def _derivatives(name):
    """Jitted (output, jacfwd, grad, hessian) of a scheme and of Σ scheme(w)·c."""
    f = functools.partial(_scheme, name)

    def loss(w, c):
        return jnp.sum(f(w) * c)

    @jax.jit
    def everything(w, c):
        return f(w), jax.jacfwd(f)(w), jax.grad(loss)(w, c), jax.hessian(loss)(w, c)

    return everything


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("kind", ["all_zero", "zero_slice"])
def test_degenerate_kernels_are_finite_to_second_order(name, kind):
    rng = np.random.default_rng(70)
    w = np.zeros(SHAPE) if kind == "all_zero" else rng.standard_normal(SHAPE)
    w[..., ZERO_FEATURE] = 0.0
    c = rng.standard_normal(SHAPE)
    out, jac, grad, hess = _derivatives(name)(w, c)
    _finite(out, jac, grad, hess)
    assert jac.shape == SHAPE + SHAPE and hess.shape == SHAPE + SHAPE
    np.testing.assert_array_equal(out[..., ZERO_FEATURE], 0.0)
    np.testing.assert_allclose(grad, np.tensordot(c, jac, w.ndim), **TOL64)  # reverse = forward
    if kind == "all_zero":
        np.testing.assert_array_equal(out, 0.0)
    if name in ("weight_norm", "weight_norm_exp"):  # zero derivatives out of a zero slice
        np.testing.assert_array_equal(jac[..., ZERO_FEATURE, :, :, :], 0.0)


@pytest.mark.parametrize("exponential", [False, True])
def test_weight_norm_zero_slice_leaves_other_features_exact(exponential):
    rng = np.random.default_rng(71)
    v = rng.standard_normal(SHAPE)
    v[..., ZERO_FEATURE] = 0.0
    g = rng.uniform(0.5, 2.0, SHAPE[-1])
    w = _wn(v, g, exponential=exponential)
    gain = np.exp(g) if exponential else g
    for f in range(SHAPE[-1]):
        s = v[..., f]
        want = np.zeros_like(s) if f == ZERO_FEATURE else gain[f] * s / np.sqrt(np.sum(s * s))
        np.testing.assert_allclose(w[..., f], want, **TOL64)
    grad_g = jax.jit(jax.grad(lambda g: jnp.sum(jn.weight_norm(v, g, exponential=exponential))))(g)
    assert grad_g[ZERO_FEATURE] == 0.0
    _finite(grad_g)


@pytest.mark.parametrize("epsilon", [1e-12, 0.0])
def test_spectral_norm_zero_kernel_keeps_u_then_recovers(epsilon):
    rng = np.random.default_rng(72)
    u0 = rng.standard_normal(4)
    zero = np.zeros((3, 3, 2, 4))
    w0, u1 = _sn(zero, u0, n_iterations=3, epsilon=epsilon)
    np.testing.assert_array_equal(w0, 0.0)
    np.testing.assert_array_equal(u1, u0)
    w = rng.standard_normal(zero.shape)
    w_sn, _ = _sn(w, u1, n_iterations=60, epsilon=epsilon)
    top = np.linalg.svd(_matrix(w, -1), compute_uv=False)[0]
    np.testing.assert_allclose(np.mean(w / np.asarray(w_sn)), top, rtol=1e-8)


# ---------------------------------------------------------- transformations

JIT_CASES = {  # the shapes of the check_grads tests: their eager compilations are shared
    "weight_norm": lambda w, g, u: jn.weight_norm(w, g, exponential=True),
    "spectral_norm": lambda w, g, u: jn.spectral_norm(w, u, n_iterations=3),
    "weight_standardize": lambda w, g, u: jn.weight_standardize(w),
}


@pytest.mark.parametrize("name", sorted(JIT_CASES))
def test_jit_equals_eager(name):
    rng = np.random.default_rng(80)
    w, g, u = rng.standard_normal((3, 2, 4)), rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    f = JIT_CASES[name]
    want = f(w, g, u)
    got = jax.jit(f)(w, g, u)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **TOL64)


VMAP_CASES = {
    "weight_norm_exp": lambda w, g, u: jn.weight_norm(w, g, exponential=True),
    "weight_norm_whole": lambda w, g, u: jn.weight_norm(w, g[0], feature_axis=None),
    "spectral_norm": lambda w, g, u: jn.spectral_norm(w, u, n_iterations=3),
    "weight_standardize": lambda w, g, u: jn.weight_standardize(w, feature_axis=0),
}


def test_vmap_over_stacked_kernels_equals_loop():
    rng = np.random.default_rng(81)
    ws = rng.standard_normal((3, 2, 3, 4))
    ws[1] = 0.0  # a zero kernel in the stack: only its own member keeps u
    ws[2, ..., 1] = 0.0
    gs, us = rng.uniform(0.5, 2, (3, 4)), rng.standard_normal((3, 4))

    @jax.jit
    def both(ws, gs, us):
        return {
            name: (jax.vmap(f)(ws, gs, us), [f(ws[i], gs[i], us[i]) for i in range(len(ws))])
            for name, f in VMAP_CASES.items()
        }

    results = both(ws, gs, us)
    for name, (got, loop) in results.items():
        for i, want in enumerate(loop):
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
                np.testing.assert_allclose(a[i], b, err_msg=name, **TOL64)
    # the batched power iteration keeps u only for the zero member
    _, u_new = results["spectral_norm"][0]
    np.testing.assert_array_equal(u_new[1], us[1])
    assert not np.allclose(u_new[0], us[0]) and not np.allclose(u_new[2], us[2])


def test_weight_norm_check_grads():
    """Both parameterizations in one function of (v, g, log g)."""
    rng = np.random.default_rng(82)
    v = rng.standard_normal((3, 2, 4))
    g = rng.uniform(0.5, 1.5, 4)

    def f(v, g, s):
        return jn.weight_norm(v, g), jn.weight_norm(v, s, exponential=True)

    check_grads(f, (v, g, np.log(g)), order=2, modes=("fwd", "rev"))


def test_weight_standardize_check_grads():
    w = np.random.default_rng(83).standard_normal((3, 2, 4))
    check_grads(jn.weight_standardize, (w,), order=2, modes=("fwd", "rev"))


def _fixed_uv_spectral(w, u, v, axis):
    """W ↦ W / (uᵀ W v) with u, v constants."""
    mat = jnp.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return w / (u @ (mat @ v))


@pytest.mark.parametrize("shape, axis, n_iterations", [((3, 3, 2, 4), -1, 1), ((4, 3, 2), 0, 4)])
def test_spectral_norm_derivative_is_sigma_through_w_only(shape, axis, n_iterations):
    rng = np.random.default_rng(84)
    w, c, t = (rng.standard_normal(shape) for _ in range(3))
    u0 = rng.standard_normal(shape[axis])
    u, v = _np_power_iteration(_matrix(w, axis), u0, n_iterations)

    def ours(w):
        return jn.spectral_norm(w, u0, n_iterations=n_iterations, feature_axis=axis)

    def fixed(w):
        return _fixed_uv_spectral(w, u, v, axis)

    @jax.jit
    def derivatives(w, t):
        return (
            ours(w),
            fixed(w),
            jax.grad(lambda w: jnp.sum(ours(w)[0] * c))(w),
            jax.grad(lambda w: jnp.sum(fixed(w) * c))(w),
            jax.jvp(lambda w: ours(w)[0], (w,), (t,))[1],
            jax.jvp(fixed, (w,), (t,))[1],
            jax.jvp(lambda w: ours(w)[1], (w,), (t,))[1],
        )

    (w_sn, u_new), w_fixed, grad_ours, grad_fixed, jvp_ours, jvp_fixed, jvp_u = derivatives(w, t)
    np.testing.assert_allclose(u_new, u, **TOL64)
    np.testing.assert_allclose(w_sn, w_fixed, **TOL64)
    np.testing.assert_allclose(grad_ours, grad_fixed, **TOL64)
    np.testing.assert_allclose(jvp_ours, jvp_fixed, **TOL64)
    np.testing.assert_array_equal(jvp_u, 0.0)  # u carries no derivative


def test_spectral_norm_second_derivatives_forward_equals_reverse():
    rng = np.random.default_rng(85)
    w, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    u0 = rng.standard_normal(4)
    u, v = _np_power_iteration(_matrix(w, -1), u0, 2)

    def f(w):
        return jnp.sum(jn.spectral_norm(w, u0, n_iterations=2)[0] * c)

    fwd_rev, rev_fwd, want = jax.jit(
        lambda w: (
            jax.jacfwd(jax.jacrev(f))(w),
            jax.jacrev(jax.jacfwd(f))(w),
            jax.hessian(lambda w: jnp.sum(_fixed_uv_spectral(w, u, v, -1) * c))(w),
        )
    )(w)
    assert fwd_rev.shape == (3, 4, 3, 4)
    np.testing.assert_allclose(fwd_rev, rev_fwd, **TOL64)
    np.testing.assert_allclose(fwd_rev, want, **TOL64)
    assert np.max(np.abs(want)) > 1e-3  # a non-trivial Hessian


# -------------------------------------------------------------------- dtypes


@jax.jit
def _all_schemes(w, g):  # spectral_norm: test_spectral_norm_low_precision_dtypes
    return {
        "weight_norm": jn.weight_norm(w, g),
        "weight_norm_whole_exp": jn.weight_norm(w, g[0], feature_axis=None, exponential=True),
        "weight_standardize": jn.weight_standardize(w),
    }, (jn.weight_norm_init(w), jn.weight_norm_init(w, feature_axis=None, exponential=True))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_low_precision_kernels(dtype):
    """The result is the float32 computation on the same values, rounded once."""
    rng = np.random.default_rng(90)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), dtype)
    g = jnp.asarray(rng.uniform(0.5, 2.0, 4), dtype)
    got, inits = _all_schemes(w, g)
    want, inits32 = _all_schemes(w.astype(jnp.float32), g.astype(jnp.float32))
    rtol = 1e-2 if dtype == jnp.bfloat16 else 2e-3
    for name, out in got.items():
        assert out.dtype == dtype and out.shape == w.shape, name
        np.testing.assert_allclose(np.asarray(out, np.float32), want[name], rtol=rtol, atol=1e-6, err_msg=name)
    for init, init32 in zip(inits, inits32, strict=True):
        assert init.dtype == dtype
        np.testing.assert_allclose(np.asarray(init, np.float32), init32, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize(
    "w_dtype, u_dtype", [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float16)]
)
def test_spectral_norm_low_precision_dtypes(w_dtype, u_dtype):
    """The kernel comes back in w's dtype, u in u's, both close to the float64 result."""
    rng = np.random.default_rng(91)
    w = jnp.asarray(rng.standard_normal((5, 4)), w_dtype)
    u = jnp.asarray(rng.standard_normal(4), u_dtype)
    w_sn, u_new = _sn(w, u, n_iterations=2)
    assert w_sn.dtype == w_dtype and u_new.dtype == u_dtype
    u_ref, v_ref = _np_power_iteration(_matrix(w, -1), np.asarray(u, np.float64), 2)
    w_ref = np.asarray(w, np.float64) / (u_ref @ _matrix(w, -1) @ v_ref)
    rtol = 1e-2 if jnp.bfloat16 in (w_dtype, u_dtype) else 2e-3
    np.testing.assert_allclose(np.asarray(u_new, np.float64), u_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(np.asarray(w_sn, np.float64), w_ref, rtol=rtol, atol=rtol)


# -------------------------------------------------------------------- errors

KEY = jax.random.key(0)
W = np.ones((3, 4))  # 4 output features with feature_axis=-1
U = np.ones(4)
G = np.ones(4)
WI = np.ones((3, 4), np.int32)

SN, SNI, WS = jn.spectral_norm, jn.spectral_norm_init, jn.weight_standardize
WN, WNI = jn.weight_norm, jn.weight_norm_init
RANK = "expected a kernel w of rank >= 2"
FLOAT = "expected a floating-point input"
POSITIVE = "n_iterations must be a positive int"
EPS = "epsilon must be a finite number >= 0"
# (id, function, args, kwargs, exception, message fragment after "<function name>: ")
ERRORS = [
    ("sn-vector", SN, (np.ones(4), U), {}, ValueError, RANK),
    ("sn-n0", SN, (W, U), dict(n_iterations=0), ValueError, POSITIVE),
    ("sn-n-1", SN, (W, U), dict(n_iterations=-1), ValueError, POSITIVE),
    ("sn-n1.5", SN, (W, U), dict(n_iterations=1.5), TypeError, POSITIVE),
    ("sn-nTrue", SN, (W, U), dict(n_iterations=True), TypeError, POSITIVE),
    ("sn-u-short", SN, (W, np.ones(3)), {}, ValueError, r"u must have shape \(4,\)"),
    ("sn-u-column", SN, (W, np.ones((4, 1))), {}, ValueError, r"u must have shape \(4,\)"),
    ("sn-u-axis0", SN, (W, U), dict(feature_axis=0), ValueError, r"u must have shape \(3,\)"),
    ("sn-u-int", SN, (W, np.ones(4, np.int32)), {}, TypeError, "u must be floating point"),
    ("sn-u-None", SN, (W, None), {}, TypeError, "u is required"),
    ("sn-int", SN, (WI, U), {}, TypeError, FLOAT),
    ("sn-axis2", SN, (W, U), dict(feature_axis=2), ValueError, "feature_axis=2 is out of range"),
    ("sn-axis-3", SN, (W, U), dict(feature_axis=-3), ValueError, "feature_axis=-3 is out of range"),
    ("sn-axis-None", SN, (W, U), dict(feature_axis=None), TypeError, "feature_axis must be an int"),
    ("sn-eps", SN, (W, U), dict(epsilon=-1e-12), ValueError, EPS),
    ("sn-eps-nan", SN, (W, U), dict(epsilon=float("nan")), ValueError, EPS),
    ("sni-vector", SNI, (KEY, np.ones(4)), {}, ValueError, RANK),
    ("sni-n-1", SNI, (KEY, W), dict(n_iterations=-1), ValueError, "n_iterations must be"),
    ("sni-n1.5", SNI, (KEY, W), dict(n_iterations=1.5), TypeError, "n_iterations must be"),
    ("sni-int", SNI, (KEY, WI), {}, TypeError, FLOAT),
    ("sni-axis", SNI, (KEY, W), dict(feature_axis=2), ValueError, "feature_axis=2 is out of range"),
    ("sni-eps", SNI, (KEY, W), dict(epsilon=-1.0), ValueError, EPS),
    ("wn-g-column", WN, (W, np.ones((4, 1))), {}, ValueError, r"g must have shape \(4,\)"),
    ("wn-g-length", WN, (W, np.ones(3)), {}, ValueError, r"g must have shape \(4,\)"),
    ("wn-g-scalar", WN, (W, np.float64(1.0)), {}, ValueError, r"g must have shape \(4,\)"),
    ("wn-g-axis0", WN, (W, G), dict(feature_axis=0), ValueError, r"g must have shape \(3,\)"),
    ("wn-g-whole", WN, (W, G), dict(feature_axis=None), ValueError, r"g must have shape \(\)"),
    ("wn-g-int", WN, (W, np.ones(4, np.int32)), {}, TypeError, "g must be floating point"),
    ("wn-g-None", WN, (W, None), {}, TypeError, "g is required"),
    ("wn-int", WN, (WI, G), {}, TypeError, FLOAT),
    ("wn-int-whole", WN, (WI, np.float64(1.0)), dict(feature_axis=None), TypeError, FLOAT),
    ("wn-axis", WN, (W, G), dict(feature_axis=2), ValueError, "feature_axis=2 is out of range"),
    ("wn-axis-float", WN, (W, G), dict(feature_axis=1.0), TypeError, "feature_axis must be an int"),
    ("wn-exp-int", WN, (W, G), dict(exponential=1), TypeError, "exponential must be a bool"),
    ("wn-exp-str", WN, (W, G), dict(exponential="yes"), TypeError, "exponential must be a bool"),
    ("wn-exp-None", WN, (W, G), dict(exponential=None), TypeError, "exponential must be a bool"),
    ("wni-int", WNI, (WI,), {}, TypeError, FLOAT),
    ("wni-axis", WNI, (W,), dict(feature_axis=-3), ValueError, "feature_axis=-3 is out of range"),
    ("ws-vector", WS, (np.ones(4),), {}, ValueError, RANK),
    ("ws-int", WS, (WI,), {}, TypeError, FLOAT),
    ("ws-axis", WS, (W,), dict(feature_axis=2), ValueError, "feature_axis=2 is out of range"),
    ("ws-eps", WS, (W,), dict(epsilon=-1e-5), ValueError, EPS),
]


@pytest.mark.parametrize("fn, args, kwargs, exc, fragment", [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_errors(fn, args, kwargs, exc, fragment, jit):
    """Raised at trace time, eagerly and under jit, naming the function."""
    call = functools.partial(fn, **kwargs)
    with pytest.raises(exc, match=f"^{fn.__name__}: {fragment}"):
        (jax.jit(call) if jit else call)(*args)


@pytest.mark.parametrize("exponential", [1, "yes", None])
def test_weight_norm_init_rejects_non_bool_exponential(exponential):
    """Documented to raise as weight_norm does, which rejects a non-bool exponential."""
    with pytest.raises(TypeError, match=r"^weight_norm_init: exponential must be a bool"):
        jn.weight_norm_init(W, exponential=exponential)


@pytest.mark.parametrize("n_iterations", [True, False, 1.0, 0.0])
def test_spectral_norm_init_rejects_non_int_n_iterations(n_iterations):
    """Documented to raise as spectral_norm does (which rejects bools and floats), 0 allowed."""
    with pytest.raises(TypeError, match=r"^spectral_norm_init: n_iterations must be"):
        jn.spectral_norm_init(KEY, W, n_iterations=n_iterations)


# --------------------------------------------------------- weight_norm_init


@jax.jit(static_argnames="axis")
def _round_trip(v, axis):
    g = jn.weight_norm_init(v, feature_axis=axis)
    log_g = jn.weight_norm_init(v, feature_axis=axis, exponential=True)
    w = jn.weight_norm(v, g, feature_axis=axis)
    w_exp = jn.weight_norm(v, log_g, feature_axis=axis, exponential=True)
    return g, log_g, w, w_exp


@pytest.mark.parametrize("axis", [-1, 0, None])
def test_weight_norm_init_round_trip(axis):
    """weight_norm(v, weight_norm_init(v)) == v, g = ‖v‖ (log ‖v‖, 0 for a zero slice)."""
    rng = np.random.default_rng(100)
    v = rng.standard_normal((3, 2, 4))
    if axis is not None:  # an all-zero slice must survive too
        index = [slice(None)] * v.ndim
        index[axis] = 1
        v[tuple(index)] = 0.0
        norms = np.sqrt(np.sum(np.moveaxis(v, axis, 0) ** 2, axis=(1, 2)))
    else:
        norms = np.sqrt(np.sum(v * v))
    g, log_g, w, w_exp = _round_trip(v, axis)
    assert g.shape == log_g.shape == np.shape(norms) and g.dtype == log_g.dtype == jnp.float64
    np.testing.assert_allclose(g, norms, **TOL64)
    np.testing.assert_allclose(log_g, np.where(norms > 0, np.log(np.where(norms > 0, norms, 1.0)), 0.0), **TOL64)
    np.testing.assert_allclose(w, v, **TOL64)
    np.testing.assert_allclose(w_exp, v, **TOL64)
