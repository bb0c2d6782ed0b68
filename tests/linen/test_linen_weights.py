"""jaxnorm.linen's weight schemes: WeightNorm, SpectralNorm, StandardizedConv; and spectral_norm_sigma.

* Drop-in: the same small model built with flax.linen's WeightNorm and
  SpectralNorm and with jaxnorm.linen's gives the same variable tree (names,
  shapes, values), outputs, gradients and updated ``batch_stats``, float64.
  The two differ only where flax.linen puts ``epsilon`` (1e-12) under a
  square root and jaxnorm has none (weight norm) or floors the norm (power
  iteration): a relative ~1e-12 in float64, hence ``TOL``.
* The options flax.linen lacks (``exponential``, ``init_from_kernel``,
  several feature axes) against float64 NumPy transcriptions.
* ``jn.spectral_norm_sigma``: the top singular value (NumPy's SVD), the
  identity ``spectral_norm == w / σ``, and gradients through σ against
  PyTorch's legacy ``torch.nn.utils.spectral_norm`` from the same ``u``.
* ``StandardizedConv`` against ``nn.Conv`` with a kernel standardized by a
  NumPy transcription of Qiao et al.'s eq. 5; a GN+WS model trains under jit.
* jit, grad, vmap (``jax.vmap`` and ``nn.vmap``) and the errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

import jaxnorm as jn
import jaxnorm.linen as jl

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = dict(param_dtype=jnp.float64)
# wrapped layers of the drop-in model: a plain normal initializer compiles far faster than
# flax's default truncated normal (its erf_inv), and init time dominates these tests
LAYER64 = dict(F64, kernel_init=nn.initializers.normal(0.5))


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _assert_trees_close(got, want, **tol):
    """Same structure (names), shapes and dtypes, and values within ``tol``."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, b, err_msg=jax.tree_util.keystr(path), **{**TOL, **tol})


# ------------------------------------------------------------------ drop-in


def _model(lib):
    """WN(Conv) -> SN(Conv, 3 steps) -> flatten -> SN(Dense, 1 step) -> WN(Dense, all its variables), float64."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = lib.WeightNorm(nn.Conv(4, (2, 2), **LAYER64), **F64)(x)
            x = jnp.tanh(x)
            x = lib.SpectralNorm(nn.Conv(3, (3, 3), **LAYER64), n_steps=3, **F64)(x, update_stats=train)
            x = x.reshape(x.shape[0], -1)
            x = lib.SpectralNorm(nn.Dense(5, **LAYER64), **F64)(x, update_stats=train)
            # every variable of the last layer (a bias away from 0: flax.linen's ε differs there)
            last = nn.Dense(2, bias_init=nn.initializers.normal(1.0), **LAYER64)
            return lib.WeightNorm(last, variable_filter=None, **F64)(jnp.tanh(x))

    return Model()


def _steps(lib, variables, x):
    """A training step (update_stats=True) then an eval step from its state, each with its
    loss, state and gradient wrt the params: one jit compilation per library."""
    model = _model(lib)

    def loss(params, state, train):
        y, new_state = model.apply({"params": params, **state}, x, train=train, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), new_state

    grad = jax.value_and_grad(loss, has_aux=True)

    @jax.jit
    def both(variables):
        params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
        (train_loss, train_state), train_grads = grad(params, state, True)
        (eval_loss, eval_state), eval_grads = grad(params, train_state, False)
        return (train_loss, train_state, train_grads), (eval_loss, eval_state, eval_grads)

    return both(variables)


def test_drop_in_matches_flax():
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2))
    key = jax.random.key(3)
    want = jax.jit(_model(nn).init, static_argnames="train")(key, x, train=False)
    got = jax.jit(_model(jl).init, static_argnames="train")(key, x, train=False)
    _assert_trees_close(_np(got), _np(want))  # same names, shapes, u drawn from the same RNG
    # init stores the kernels as seen through the wrappers (flax.linen's map_variables): move
    # them away from σ = 1 and unit norms, as training would
    variables = {
        **want,
        "params": jax.tree_util.tree_map(
            lambda a: 1.7 * a + 0.2 * np.cos(np.arange(a.size)).reshape(a.shape), want["params"]
        ),
    }
    w_train, w_eval = _steps(nn, variables, x)
    g_train, g_eval = _steps(jl, variables, x)
    _assert_trees_close(_np(g_train), _np(w_train))  # loss, updated u and sigma, gradients
    _assert_trees_close(_np(g_eval), _np(w_eval))
    # the training step moved u and recorded σ; the eval step stored nothing
    u_path = ("batch_stats", "SpectralNorm_0", "Conv_1/kernel/u")
    get = lambda tree: functools.reduce(lambda t, k: t[k], u_path, tree)  # noqa: E731
    assert not np.allclose(get(w_train[1]), get(want))
    assert not np.allclose(w_train[1]["batch_stats"]["SpectralNorm_1"]["Dense_0/kernel/sigma"], 1.0)
    for train, evaluation in ((g_train, g_eval), (w_train, w_eval)):
        _assert_trees_close(_np(evaluation[1]), _np(train[1]), rtol=0, atol=0)


def test_drop_in_float32_defaults():
    """flax.linen's default dtypes (float32 everywhere): same numbers to float32 rounding."""
    x = np.random.default_rng(1).standard_normal((3, 7)).astype(np.float32)

    def model(lib):
        class M(nn.Module):
            @nn.compact
            def __call__(self, x, train):
                x = lib.WeightNorm(nn.Dense(6))(x)
                return lib.SpectralNorm(nn.Dense(4))(x, update_stats=train)

        return M()

    variables = model(nn).init(jax.random.key(0), x, train=False)
    want = model(nn).apply(variables, x, train=True, mutable=["batch_stats"])
    got = model(jl).apply(variables, x, train=True, mutable=["batch_stats"])
    _assert_trees_close(_np(got), _np(want), rtol=2e-6, atol=1e-6)
    assert got[0].dtype == jnp.float32


def test_weight_norm_several_feature_axes_matches_flax():
    """feature_axes=(2, 3) on a conv kernel: one norm and scale per (in, out) pair, as flax.linen."""
    x = np.random.default_rng(2).standard_normal((2, 5, 5, 3))

    def model(lib):
        return lib.WeightNorm(nn.Conv(4, (2, 2), **F64), feature_axes=(2, 3), **F64)

    variables = model(nn).init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: a + 0.3 * np.cos(np.arange(a.size)).reshape(a.shape), variables)
    _assert_trees_close(_np(model(jl).init(jax.random.key(0), x)), _np(model(nn).init(jax.random.key(0), x)))
    assert variables["params"]["layer_instance/kernel/scale"].shape == (3, 4)
    np.testing.assert_allclose(model(jl).apply(variables, x), model(nn).apply(variables, x), **TOL)


def test_spectral_norm_n_steps_zero_is_identity_like_flax():
    x = np.random.default_rng(3).standard_normal((2, 5))
    for lib in (nn, jl):
        layer = lib.SpectralNorm(nn.Dense(3, **F64), n_steps=0, **F64)
        variables = layer.init(jax.random.key(0), x, update_stats=True)
        assert "batch_stats" not in variables
        np.testing.assert_allclose(
            layer.apply(variables, x, update_stats=False),
            nn.Dense(3).apply({"params": variables["params"]["layer_instance"]}, x),
            **TOL,
        )


# ------------------------------------------------------- WeightNorm options


def _dense_variables(rng, fin, fout, scale_shape):
    """Variables of a top-level WeightNorm(nn.Dense): the wrapped layer is its field ``layer_instance``."""
    return {
        "params": {
            "layer_instance": {"kernel": rng.standard_normal((fin, fout)), "bias": rng.standard_normal(fout)},
            "layer_instance/kernel/scale": rng.uniform(-0.5, 1.5, scale_shape),
        }
    }


@pytest.mark.parametrize("exponential", [False, True])
@pytest.mark.parametrize("feature_axes", [-1, 0, None])
def test_weight_norm_options_match_numpy(exponential, feature_axes):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5))
    scale_shape = {-1: (4,), 0: (5,), None: ()}[feature_axes]
    variables = _dense_variables(rng, 5, 4, scale_shape)
    layer = jl.WeightNorm(nn.Dense(4, **F64), exponential=exponential, feature_axes=feature_axes, **F64)
    v, b = variables["params"]["layer_instance"]["kernel"], variables["params"]["layer_instance"]["bias"]
    s = variables["params"]["layer_instance/kernel/scale"]
    g = np.exp(s) if exponential else s
    if feature_axes is None:
        w = g * v / np.sqrt(np.sum(v * v))
    elif feature_axes == 0:
        w = g[:, None] * v / np.sqrt(np.sum(v * v, axis=1, keepdims=True))
    else:
        w = g[None, :] * v / np.sqrt(np.sum(v * v, axis=0, keepdims=True))
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), x @ w + b, **TOL)
    # and the core agrees (the module holds no math of its own)
    w_core = jn.weight_norm(v, s, feature_axis=None if feature_axes is None else feature_axes, exponential=exponential)
    np.testing.assert_allclose(w_core, w, **TOL)


@pytest.mark.parametrize("exponential", [False, True])
@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_init_from_kernel_leaves_layer_unchanged(exponential, layer):
    make = {"dense": lambda: nn.Dense(3, **F64), "conv": lambda: nn.Conv(3, (2, 3), **F64)}[layer]
    x = np.random.default_rng(5).standard_normal((2, 4, 5, 2) if layer == "conv" else (2, 4))

    class Wrapped(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jl.WeightNorm(make(), init_from_kernel=True, exponential=exponential, **F64)(x)

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return make()(x)

    key = jax.random.key(6)
    y_wrapped, variables = Wrapped().init_with_output(key, x)
    y_plain, plain = Plain().init_with_output(key, x)
    name = type(make()).__name__ + "_0"
    np.testing.assert_allclose(variables["params"][name]["kernel"], plain["params"][name]["kernel"], **TOL)
    np.testing.assert_allclose(y_wrapped, y_plain, **TOL)
    np.testing.assert_allclose(Wrapped().apply(variables, x), y_plain, **TOL)
    kernel = np.asarray(plain["params"][name]["kernel"])
    norms = np.sqrt(np.sum(kernel**2, axis=tuple(range(kernel.ndim - 1))))
    scale = variables["params"]["WeightNorm_0"][f"{name}/kernel/scale"]
    np.testing.assert_allclose(scale, np.log(norms) if exponential else norms, **TOL)


def test_weight_norm_default_starts_at_g_one_like_flax():
    """Without init_from_kernel the default stays flax.linen's g = 1 (a unit-norm kernel)."""
    x = np.ones((1, 4))
    variables = jl.WeightNorm(nn.Dense(3)).init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["layer_instance/kernel/scale"], np.ones(3, np.float32))


# ------------------------------------------------------ spectral_norm_sigma


def _np_power_iteration(mat, u, n):
    for _ in range(n):
        v = mat.T @ u
        v = v / np.linalg.norm(v)
        u = mat @ v
        u = u / np.linalg.norm(u)
    return u, v


@pytest.mark.parametrize("shape,axis", [((6, 4), -1), ((4, 6), 0), ((2, 3, 3, 5), -1)])
def test_spectral_norm_sigma_is_top_singular_value(shape, axis):
    rng = np.random.default_rng(7)
    w, u = rng.standard_normal(shape), rng.standard_normal(shape[axis])
    sigma, new_u = jax.jit(jn.spectral_norm_sigma, static_argnames=("n_iterations", "feature_axis"))(
        w, u, n_iterations=200, feature_axis=axis
    )
    mat = np.moveaxis(w, axis, 0).reshape(shape[axis], -1)
    assert sigma.shape == () and sigma.dtype == np.float64 and new_u.shape == u.shape
    np.testing.assert_allclose(sigma, np.linalg.svd(mat, compute_uv=False)[0], rtol=1e-10)
    # few steps: σ = uᵀWv of the NumPy iteration, and the same u
    sigma3, u3 = jn.spectral_norm_sigma(w, u, n_iterations=3, feature_axis=axis)
    u_np, v_np = _np_power_iteration(mat, u, 3)
    np.testing.assert_allclose(sigma3, u_np @ mat @ v_np, **TOL)
    np.testing.assert_allclose(u3, u_np, **TOL)


@pytest.mark.parametrize("zero", [False, True])
def test_spectral_norm_is_w_over_sigma(zero):
    rng = np.random.default_rng(8)
    w, u = rng.standard_normal((3, 2, 5)) * (0 if zero else 1), rng.standard_normal(5)
    w_sn, u_sn = jn.spectral_norm(w, u, n_iterations=2)
    sigma, u_sigma = jn.spectral_norm_sigma(w, u, n_iterations=2)
    np.testing.assert_array_equal(u_sn, u_sigma)
    np.testing.assert_allclose(w_sn, w / np.asarray(sigma), rtol=1e-15, atol=0)
    if zero:  # σ reads 1, u is kept, derivatives are finite
        assert sigma == 1.0
        np.testing.assert_array_equal(u_sigma, u)
        grad = jax.grad(lambda w: jn.spectral_norm_sigma(w, u)[0])(w)
        assert np.all(np.isfinite(grad))


def test_spectral_norm_sigma_float32_and_errors():
    w = np.random.default_rng(9).standard_normal((4, 3)).astype(np.float32)
    sigma, u = jn.spectral_norm_sigma(w, np.ones(3, np.float32))
    assert sigma.dtype == np.float32 and u.dtype == np.float32
    with pytest.raises(ValueError, match="spectral_norm_sigma: .*rank >= 2"):
        jn.spectral_norm_sigma(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="spectral_norm_sigma"):
        jn.spectral_norm_sigma(w, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="spectral_norm_sigma"):
        jn.spectral_norm_sigma(w, np.ones(3, np.float32), n_iterations=0)


@pytest.mark.parametrize("n_iterations", [1, 4])
def test_gradient_through_sigma_matches_legacy_torch(n_iterations):
    """d/dW of Σ c·(W/σ) and of σ itself, against torch.nn.utils.spectral_norm from the same u."""
    rng = np.random.default_rng(10)
    m = torch.nn.Linear(5, 3, bias=False, dtype=torch.float64)
    torch.nn.utils.spectral_norm(m, n_power_iterations=n_iterations)
    w, u0, c = rng.standard_normal((3, 5)), rng.standard_normal(3), rng.standard_normal((3, 5))
    u0 = u0 / np.linalg.norm(u0)  # torch stores a normalized u
    with torch.no_grad():
        m.weight_orig.copy_(torch.tensor(w))
        m.weight_u.copy_(torch.tensor(u0))
    m(torch.zeros((1, 5), dtype=torch.float64))  # the pre-hook runs the iteration
    (m.weight * torch.tensor(c)).sum().backward()
    grad_torch = m.weight_orig.grad.numpy()

    def loss(w):
        sigma, _ = jn.spectral_norm_sigma(w, u0, n_iterations=n_iterations, feature_axis=0)
        return jnp.sum(c * w / sigma)

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(w), grad_torch, **TOL)
    np.testing.assert_allclose(
        jn.spectral_norm_sigma(w, u0, n_iterations=n_iterations, feature_axis=0)[1], m.weight_u.numpy(), **TOL
    )
    # ∂σ/∂W = u vᵀ with the iterated (constant) u and v
    u_np, v_np = _np_power_iteration(w, u0, n_iterations)
    grad_sigma = jax.grad(lambda w: jn.spectral_norm_sigma(w, u0, n_iterations=n_iterations, feature_axis=0)[0])(w)
    np.testing.assert_allclose(grad_sigma, np.outer(u_np, v_np), **TOL)


@pytest.mark.parametrize("recover_from_zero", [False, True])
def test_spectral_norm_module_zero_kernel_is_finite(recover_from_zero):
    """Finite either way; flax's default stores u = 0 and σ = 0, recover_from_zero keeps u and records 1."""
    x = np.random.default_rng(11).standard_normal((2, 4))
    layer = jl.SpectralNorm(nn.Dense(3, **F64), recover_from_zero=recover_from_zero, **F64)
    variables = layer.init(jax.random.key(0), x, update_stats=False)
    params = jax.tree_util.tree_map(np.zeros_like, variables["params"])
    u = variables["batch_stats"]["layer_instance/kernel/u"]

    def loss(params):
        y, state = layer.apply({**variables, "params": params}, x, update_stats=True, mutable=["batch_stats"])
        return jnp.sum(y), state

    (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert value == 0.0
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    if recover_from_zero:
        np.testing.assert_array_equal(state["batch_stats"]["layer_instance/kernel/u"], u)
        assert state["batch_stats"]["layer_instance/kernel/sigma"] == 1.0
    else:
        np.testing.assert_array_equal(state["batch_stats"]["layer_instance/kernel/u"], 0)
        assert state["batch_stats"]["layer_instance/kernel/sigma"] == 0.0


# --------------------------------------------------------- StandardizedConv


def _np_standardize(kernel, eps):
    """Qiao et al. eq. 5, one output channel at a time over (kh, kw, in): biased variance, ε in the sqrt."""
    kernel = np.asarray(kernel, np.float64)
    out = np.empty_like(kernel)
    for o in range(kernel.shape[-1]):
        k = kernel[..., o]
        mean = k.sum() / k.size
        var = ((k - mean) ** 2).sum() / k.size
        out[..., o] = (k - mean) / np.sqrt(var + eps)
    return out


@pytest.mark.parametrize(
    "conv_kw,ws_epsilon",
    [(dict(features=4, kernel_size=(3, 3)), 1e-5), (dict(features=6, kernel_size=(2,), feature_group_count=2), 0.1)],
)
def test_standardized_conv_matches_numpy_transcription(conv_kw, ws_epsilon):
    rng = np.random.default_rng(12)
    ndim = len(conv_kw["kernel_size"])
    x = rng.standard_normal((2,) + (6,) * ndim + (4,))
    ours = jl.StandardizedConv(**conv_kw, ws_epsilon=ws_epsilon, **F64)
    plain = nn.Conv(**conv_kw, **F64)
    key = jax.random.key(13)
    variables = ours.init(key, x)
    _assert_trees_close(_np(variables), _np(plain.init(key, x)), rtol=0, atol=0)  # nn.Conv's variables
    variables = {"params": {"kernel": 1 + rng.standard_normal(variables["params"]["kernel"].shape) * 3,
                            "bias": rng.standard_normal(conv_kw["features"])}}
    standardized = {"params": {**variables["params"],
                               "kernel": _np_standardize(variables["params"]["kernel"], ws_epsilon)}}
    np.testing.assert_allclose(jax.jit(ours.apply)(variables, x), plain.apply(standardized, x), **TOL)
    assert not np.allclose(ours.apply(variables, x), plain.apply(variables, x))


def test_standardized_conv_default_epsilon():
    assert jl.StandardizedConv(features=2, kernel_size=(3, 3)).ws_epsilon == 1e-5


def test_gn_ws_model_trains_a_step_under_jit():
    class GNWS(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jl.StandardizedConv(8, (3, 3), use_bias=False)(x)
            x = nn.relu(jl.GroupNorm(num_groups=4)(x))
            return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))

    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    model = GNWS()
    params = model.init(jax.random.key(0), x)["params"]

    def loss(params):
        logits = model.apply({"params": params}, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    @jax.jit
    def step(params):
        value, grads = jax.value_and_grad(loss)(params)
        return value, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), grads

    before, new_params, grads = step(params)
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))
    assert jax.jit(loss)(new_params) < before


# ---------------------------------------------------------- transformations


def test_jit_equals_eager_and_vmap_over_batch():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((5, 6))
    layer = jl.SpectralNorm(jl.WeightNorm(nn.Dense(4, **F64), **F64), n_steps=2, **F64)
    variables = layer.init(jax.random.key(0), x, update_stats=False)
    eager = layer.apply(variables, x, update_stats=False)
    np.testing.assert_allclose(jax.jit(functools.partial(layer.apply, update_stats=False))(variables, x), eager, **TOL)
    # one example at a time, the same variables
    per_example = jax.vmap(lambda xi: layer.apply(variables, xi, update_stats=False))(x)
    np.testing.assert_allclose(per_example, eager, **TOL)


def test_nn_vmap_shares_weight_norm_params():
    rng = np.random.default_rng(16)
    x = rng.standard_normal((3, 2, 5))  # vmapped over the leading axis

    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmapped = nn.vmap(
                lambda mdl, x: mdl(x), variable_axes={"params": None}, split_rngs={"params": False}
            )
            return vmapped(jl.WeightNorm(nn.Dense(4, **F64), init_from_kernel=True, **F64), x)

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jl.WeightNorm(nn.Dense(4, **F64), init_from_kernel=True, **F64)(x)

    variables = Shared().init(jax.random.key(0), x)
    assert variables["params"]["WeightNorm_0"]["Dense_0/kernel/scale"].shape == (4,)
    variables = jax.tree_util.tree_map(lambda a: a * 1.5 + 0.1, variables)
    np.testing.assert_allclose(Shared().apply(variables, x), Plain().apply(variables, x), **TOL)


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("feature_axes,match", [(2, r"2 is not"), ((0, -2), r"\(0, -2\) names an axis twice")])
def test_weight_norm_bad_feature_axes_raise_at_init(feature_axes, match):
    with pytest.raises(ValueError, match=r"WeightNorm: feature_axes=" + match + r".*\(3, 4\)"):
        jl.WeightNorm(nn.Dense(4), feature_axes=feature_axes).init(jax.random.key(0), np.ones((1, 3)))


def test_spectral_norm_error_on_non_matrix():
    x = np.ones((1, 4, 4, 2))
    layer = jl.SpectralNorm(nn.Conv(3, (2, 2)), error_on_non_matrix=True)
    with pytest.raises(ValueError, match=r"SpectralNorm: variable 'layer_instance/kernel' has shape \(2, 2, 2, 3\)"):
        layer.init(jax.random.key(0), x, update_stats=False)
    # a Dense kernel is a matrix: fine with the flag
    jl.SpectralNorm(nn.Dense(3), error_on_non_matrix=True).init(jax.random.key(0), np.ones((1, 2)), update_stats=False)
