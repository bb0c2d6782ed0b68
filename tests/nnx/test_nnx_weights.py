"""jaxnorm.nnx WeightNorm, SpectralNorm and StandardizedConv against flax.nnx and jaxnorm.linen.

* WeightNorm and SpectralNorm as drop-ins for flax.nnx's modules of the same
  name: same signatures, same variables under the same paths, and on the
  same (random, non-trivial) values the same outputs, updated ``u``/``sigma``
  and gradients (parameters and input), in float64.
* Both, and their jaxnorm-only options, against the jaxnorm.linen twins on
  the same values (``nnx.grad`` against ``jax.grad`` of ``apply``).
* StandardizedConv against ``nnx.Conv`` given a kernel standardized in NumPy.
* The stored kernel stays raw (flax.nnx overwrites it), ``train()``/``eval()``,
  errors, and an ``nnx.jit`` train step.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxnorm.linen as jl
import jaxnorm.nnx as jx

F64 = jnp.float64
U, SIGMA = ("batch_stats", ("kernel", "u")), ("batch_stats", ("kernel", "sigma"))  # flat state paths
TOL = {"rtol": 1e-10, "atol": 1e-12}


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def _layer(kind, seed=0):
    """A float64 layer: ``(module, input)``; the Conv has a rank-3 kernel."""
    rngs = nnx.Rngs(seed)
    if kind == "linear":
        layer = nnx.Linear(3, 4, param_dtype=F64, rngs=rngs)
        x = jax.random.normal(jax.random.key(10), (5, 3), F64)
    else:
        layer = nnx.Conv(3, 4, (3,), param_dtype=F64, rngs=rngs)
        x = jax.random.normal(jax.random.key(10), (2, 6, 3), F64)
    # A non-zero bias, so that a mix-up of bias and kernel shows.
    layer.bias[...] = jax.random.normal(jax.random.key(11), layer.bias.shape, F64)
    return layer, x


def _loss(model, x, **kw):
    y = model(x, **kw)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))


def _grads(model, x, **kw):
    """``(parameter grads as a flat {path: array}, input grad)`` of ``_loss``."""
    g_params, g_x = nnx.grad(lambda m, x: _loss(m, x, **kw), argnums=(0, 1))(model, x)
    return {p: v[...] for p, v in nnx.to_flat_state(g_params)}, g_x


def _stats(model):
    return {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


# --------------------------------------------------------------------------- flax.nnx drop-ins


@pytest.mark.parametrize("name", ["WeightNorm", "SpectralNorm"])
def test_signature_matches_flax_nnx(name):
    ours = inspect.signature(getattr(jx, name).__init__).parameters
    theirs = inspect.signature(getattr(nnx, name).__init__).parameters
    for p, spec in theirs.items():
        assert p in ours, p
        assert ours[p].kind == spec.kind, p
        if p == "variable_filter":
            continue  # a fresh PathContains object each; compared by behaviour below
        assert ours[p].default == spec.default, p
    call_ours = inspect.signature(getattr(jx, name).__call__).parameters
    call_theirs = inspect.signature(getattr(nnx, name).__call__).parameters
    assert list(call_ours) == list(call_theirs)


SN_CASES = {
    # epsilon=0: flax's sqrt(‖t‖² + ε) and jaxnorm's max(‖t‖, ε) are then the same, to rounding.
    "linear-eps0": ("linear", {"epsilon": 0.0}, TOL),
    "conv-3-steps-eps0": ("conv", {"epsilon": 0.0, "n_steps": 3}, TOL),
    # default ε = 1e-12 against flax's u ~ N(0, 0.01²): they agree to ~ε/‖t‖².
    "linear-default-eps": ("linear", {}, {"rtol": 1e-6, "atol": 1e-9}),
}


@pytest.mark.parametrize("case", list(SN_CASES))
def test_spectral_norm_matches_flax_nnx(case):
    kind, kwargs, tol = SN_CASES[case]

    def build(ns):
        layer, x = _layer(kind)
        return ns.SpectralNorm(layer, param_dtype=F64, rngs=nnx.Rngs(1), **kwargs), x

    (ours, x), (theirs, _) = build(jx), build(nnx)
    # Same variables, same initial values (same rngs).
    s_ours, s_theirs = _stats(ours), _stats(theirs)
    assert set(s_ours) == set(s_theirs) == {U, SIGMA}
    for p in s_theirs:
        _close(s_ours[p], s_theirs[p], TOL)
    assert s_ours[U].dtype == F64

    # Eval: the same output, nothing stored.
    _close(ours(x, update_stats=False), theirs(x, update_stats=False), tol)
    for p, v in _stats(ours).items():
        _close(v, s_ours[p], {"rtol": 0, "atol": 0})

    # Training call, from fresh copies (flax.nnx's call overwrites its kernel with w / σ, so
    # that a second call would divide by σ ≈ 1): same output and updated u / sigma, which moved.
    (ours, x), (theirs, _) = build(jx), build(nnx)
    _close(ours(x), theirs(x), tol)
    s1_ours, s1_theirs = _stats(ours), _stats(theirs)
    for p in s1_theirs:
        _close(s1_ours[p], s1_theirs[p], tol)
    assert not np.allclose(s1_ours[SIGMA], 1.0)

    # Gradients from fresh copies (flax.nnx's call overwrites its kernel).
    (ours, x), (theirs, _) = build(jx), build(nnx)
    (g_ours, gx_ours), (g_theirs, gx_theirs) = _grads(ours, x), _grads(theirs, x)
    assert set(g_ours) == set(g_theirs) == {("layer_instance", "kernel"), ("layer_instance", "bias")}
    for p in g_theirs:
        _close(g_ours[p], g_theirs[p], tol)
    _close(gx_ours, gx_theirs, tol)


WN_CASES = {
    "linear": ("linear", {}),
    "linear-whole": ("linear", {"feature_axes": None}),
    "conv-two-axes": ("conv", {"feature_axes": (1, 2)}),
    "linear-no-scale": ("linear", {"use_scale": False}),
    "conv-bias-too": ("conv", {"variable_filter": nnx.Any(nnx.PathContains("kernel"),
                                                          nnx.PathContains("bias"))}),
}


def _random_scales(module, seed=3):
    """Non-trivial scales ``{path: array}``, the same for both modules."""
    if module.scales is None:
        return {}
    key = jax.random.key(seed)
    return {p: 0.5 + jax.random.uniform(jax.random.fold_in(key, i), s.shape, F64)
            for i, (p, s) in enumerate(sorted(module.scales.items()))}


@pytest.mark.parametrize("case", list(WN_CASES))
def test_weight_norm_matches_flax_nnx(case):
    kind, kwargs = WN_CASES[case]

    def build(ns):
        layer, x = _layer(kind)
        # flax adds ε under its square root; with ε = 0 both are the exact formula.
        module = ns.WeightNorm(layer, param_dtype=F64, epsilon=0.0, rngs=nnx.Rngs(1), **kwargs)
        return module, x

    (ours, x), (theirs, _) = build(jx), build(nnx)
    if kwargs.get("use_scale", True):
        assert set(ours.scales) == set(theirs.scales)
        for p in theirs.scales:
            _close(ours.scales[p][...], theirs.scales[p], {"rtol": 0, "atol": 0})
        assert isinstance(ours.scales[("kernel",)], nnx.Param)
        scales = _random_scales(ours)
        for p, s in scales.items():
            ours.scales[p][...] = s
            theirs.scales[p] = s
    else:
        assert ours.scales is None and theirs.scales is None
    y_ours = ours(x)
    _close(y_ours, theirs(x))
    assert y_ours.dtype == F64

    (ours, x), (theirs, _) = build(jx), build(nnx)
    if kwargs.get("use_scale", True):
        for p, s in scales.items():
            ours.scales[p][...] = s
            theirs.scales[p] = s
    (g_ours, gx_ours), (g_theirs, gx_theirs) = _grads(ours, x), _grads(theirs, x)
    # flax.nnx's scales are bare arrays (not trained by nnx.grad); the wrapped layer's grads agree.
    for p in g_theirs:
        _close(g_ours[p], g_theirs[p])
    _close(gx_ours, gx_theirs)


@pytest.mark.parametrize("name", ["WeightNorm", "SpectralNorm"])
def test_stored_kernel_stays_raw(name):
    layer, x = _layer("linear")
    raw = np.asarray(layer.kernel[...])
    module = getattr(jx, name)(layer, param_dtype=F64, rngs=nnx.Rngs(1))
    y1 = module(x)
    _close(module.layer_instance.kernel[...], raw, {"rtol": 0, "atol": 0})
    _grads(module, x)
    _close(module.layer_instance.kernel[...], raw, {"rtol": 0, "atol": 0})
    if name == "WeightNorm":
        _close(module(x), y1)  # no state: calls are repeatable


# --------------------------------------------------------------------------- jaxnorm.linen twins


LINEN_WN = {
    "dense": ("linear", {}),
    "exponential": ("linear", {"exponential": True}),
    "init-from-kernel": ("linear", {"init_from_kernel": True}),
    "conv-two-axes-exponential": ("conv", {"feature_axes": (1, 2), "exponential": True}),
}


def _linen_layer(kind):
    if kind == "linear":
        return nn.Dense(4, param_dtype=F64)
    return nn.Conv(4, (3,), padding="SAME", param_dtype=F64)


def _linen_check(module, variables, x, ours, x_ours, call_kw=None, mutable=False):
    """Outputs (and updated stats) of ``module`` and ``ours``, and gradients, on the same values."""
    call_kw = call_kw or {}
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def f(params, x):
        out = module.apply({"params": params, **rest}, x, mutable=["batch_stats"] if mutable else False,
                           **call_kw)
        y = out[0] if mutable else out
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)), out

    (_, out), (g_params, g_x) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)
    y_linen = out[0] if mutable else out
    g_ours, gx_ours = _grads(ours, x_ours, **call_kw)
    _close(gx_ours, g_x)
    return y_linen, out, g_params, g_ours


@pytest.mark.parametrize("case", list(LINEN_WN))
def test_weight_norm_matches_linen(case):
    kind, kwargs = LINEN_WN[case]
    layer, x = _layer(kind)
    ours = jx.WeightNorm(layer, param_dtype=F64, rngs=nnx.Rngs(1), **kwargs)
    module = jl.WeightNorm(_linen_layer(kind), param_dtype=F64, **kwargs)
    variables = module.init(jax.random.key(0), x)
    params = dict(variables["params"])
    params["layer_instance"] = {"kernel": layer.kernel[...], "bias": layer.bias[...]}
    if kwargs.get("init_from_kernel"):
        # Both start from ‖v‖ of their own kernel: the nnx one computes it from the shared kernel.
        g0 = np.linalg.norm(np.asarray(layer.kernel[...]), axis=0)
        _close(ours.scales[("kernel",)][...], g0)
        _close(ours(x), x @ layer.kernel[...] + layer.bias[...])  # the layer as if unwrapped
    scale = _random_scales(ours)[("kernel",)] - 0.75  # negative entries too
    ours.scales[("kernel",)][...] = scale
    params["layer_instance/kernel/scale"] = scale
    variables = {"params": params}
    y_linen, _, g_params, g_ours = _linen_check(module, variables, x, ours, x)
    _close(ours(x), y_linen)
    _close(g_ours[("scales", ("kernel",))], g_params["layer_instance/kernel/scale"])
    _close(g_ours[("layer_instance", "kernel")], g_params["layer_instance"]["kernel"])
    _close(g_ours[("layer_instance", "bias")], g_params["layer_instance"]["bias"])


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_spectral_norm_matches_linen(kind):
    layer, x = _layer(kind)
    ours = jx.SpectralNorm(layer, n_steps=2, param_dtype=F64, rngs=nnx.Rngs(1))
    module = jl.SpectralNorm(_linen_layer(kind), n_steps=2, param_dtype=F64)
    variables = module.init(jax.random.key(0), x, update_stats=False)
    u = ours.batch_stats[("kernel", "u")][...]
    variables = {
        "params": {"layer_instance": {"kernel": layer.kernel[...], "bias": layer.bias[...]}},
        "batch_stats": {"layer_instance/kernel/u": u, "layer_instance/kernel/sigma": jnp.ones((), F64)},
    }
    y_linen, (_, updates), g_params, g_ours = _linen_check(
        module, variables, x, ours, x, call_kw={"update_stats": True}, mutable=True)
    _close(g_ours[("layer_instance", "kernel")], g_params["layer_instance"]["kernel"])
    _close(g_ours[("layer_instance", "bias")], g_params["layer_instance"]["bias"])
    # nnx.grad has already run one training call on ``ours``: compare its stats with linen's.
    stats = _stats(ours)
    _close(stats[U], updates["batch_stats"]["layer_instance/kernel/u"])
    _close(stats[SIGMA], updates["batch_stats"]["layer_instance/kernel/sigma"])
    assert not np.allclose(stats[U], u)


# --------------------------------------------------------------------------- StandardizedConv


def _np_standardize(k, eps=1e-5):
    k = np.asarray(k, np.float64)
    axes = tuple(range(k.ndim - 1))
    mean = k.mean(axis=axes, keepdims=True)
    var = ((k - mean) ** 2).mean(axis=axes, keepdims=True)
    return (k - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("ws_epsilon", [None, 1e-2])
def test_standardized_conv_matches_conv_on_numpy_kernel(ws_epsilon):
    kw = {} if ws_epsilon is None else {"ws_epsilon": ws_epsilon}
    ours = jx.StandardizedConv(3, 4, (3,), param_dtype=F64, rngs=nnx.Rngs(0), **kw)
    conv = nnx.Conv(3, 4, (3,), param_dtype=F64, rngs=nnx.Rngs(0))
    # Same variables and initial values as nnx.Conv.
    _close(ours.kernel[...], conv.kernel[...], {"rtol": 0, "atol": 0})
    ours.bias[...] = jax.random.normal(jax.random.key(2), (4,), F64)
    raw = np.asarray(ours.kernel[...])
    conv.kernel[...] = jnp.asarray(_np_standardize(raw, 1e-5 if ws_epsilon is None else ws_epsilon))
    conv.bias[...] = ours.bias[...]
    x = jax.random.normal(jax.random.key(1), (2, 6, 3), F64)
    _close(ours(x), conv(x))
    _close(ours.kernel[...], raw, {"rtol": 0, "atol": 0})  # the stored kernel stays raw
    assert not np.allclose(ours(x), nnx.Conv(3, 4, (3,), param_dtype=F64, rngs=nnx.Rngs(0))(x))


def test_standardized_conv_matches_linen():
    ours = jx.StandardizedConv(3, 4, (3,), param_dtype=F64, rngs=nnx.Rngs(0))
    ours.bias[...] = jax.random.normal(jax.random.key(2), (4,), F64)
    module = jl.StandardizedConv(4, (3,), param_dtype=F64)
    x = jax.random.normal(jax.random.key(1), (2, 6, 3), F64)
    variables = {"params": {"kernel": ours.kernel[...], "bias": ours.bias[...]}}
    y_linen, _, g_params, g_ours = _linen_check(module, variables, x, ours, x)
    _close(ours(x), y_linen)
    _close(g_ours[("kernel",)], g_params["kernel"])
    _close(g_ours[("bias",)], g_params["bias"])


# --------------------------------------------------------------------------- modes, errors, jit


def test_spectral_norm_train_eval_switch():
    layer, x = _layer("linear")
    model = jx.SpectralNorm(layer, param_dtype=F64, rngs=nnx.Rngs(1))
    u0 = _stats(model)[U]
    model.eval()
    model(x)
    _close(_stats(model)[U], u0, {"rtol": 0, "atol": 0})
    model(x, update_stats=True)  # the call argument wins
    u1 = _stats(model)[U]
    assert not np.allclose(u1, u0)
    model.train()
    model(x)
    assert not np.allclose(_stats(model)[U], u1)
    frozen = jx.SpectralNorm(_layer("linear")[0], update_stats=False, param_dtype=F64, rngs=nnx.Rngs(1))
    frozen(x)
    _close(_stats(frozen)[U], u0, {"rtol": 0, "atol": 0})


def test_errors():
    conv, _ = _layer("conv")
    with pytest.raises(ValueError, match="error_on_non_matrix"):
        jx.SpectralNorm(conv, error_on_non_matrix=True, rngs=nnx.Rngs(1))
    # n_steps < 1: no state, the layer unchanged.
    layer, x = _layer("linear")
    idle = jx.SpectralNorm(layer, n_steps=0, rngs=nnx.Rngs(1))
    assert _stats(idle) == {}
    _close(idle(x), layer(x), {"rtol": 0, "atol": 0})
    with pytest.raises(ValueError, match="feature_axes"):
        jx.WeightNorm(_layer("linear")[0], feature_axes=5, rngs=nnx.Rngs(1))
    # A parameter added after wrapping has no scale.
    layer, x = _layer("linear")
    wn = jx.WeightNorm(layer, rngs=nnx.Rngs(1))
    layer.inner = nnx.Linear(3, 4, param_dtype=F64, rngs=nnx.Rngs(2))
    with pytest.raises(RuntimeError, match="inner/kernel"):
        wn(x)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = jx.StandardizedConv(3, 4, (3,), param_dtype=F64, rngs=rngs)
        self.wn = jx.WeightNorm(nnx.Linear(4, 4, param_dtype=F64, rngs=rngs), param_dtype=F64,
                                init_from_kernel=True, rngs=rngs)
        self.sn = jx.SpectralNorm(nnx.Linear(4, 2, param_dtype=F64, rngs=rngs), param_dtype=F64, rngs=rngs)

    def __call__(self, x):
        return self.sn(jnp.tanh(self.wn(jnp.tanh(self.conv(x)))))


def test_nnx_jit_train_step():
    x = jax.random.normal(jax.random.key(0), (8, 6, 3), F64)
    target = jax.random.normal(jax.random.key(1), (8, 6, 2), F64)

    def loss_fn(model):
        return jnp.mean((model(x) - target) ** 2)

    def step(model):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
        return loss

    jitted = _Net(nnx.Rngs(0))
    jit_step = nnx.jit(step)
    u0 = _stats(jitted)[("sn",) + U]
    losses = [float(jit_step(jitted)) for _ in range(3)]
    assert losses[-1] < losses[0]
    assert not np.allclose(_stats(jitted)[("sn",) + U], u0)

    # The same steps through jax.jit of the functional split/merge API.
    graphdef, state = nnx.split(_Net(nnx.Rngs(0)))

    @jax.jit
    def pure_step(state):
        model = nnx.merge(graphdef, state)
        loss = step(model)
        return loss, nnx.state(model)

    pure_losses = []
    for _ in range(3):
        loss, state = pure_step(state)
        pure_losses.append(float(loss))
    np.testing.assert_allclose(losses, pure_losses, rtol=1e-10)
    flat = dict(nnx.to_flat_state(state))
    for p, a in nnx.to_flat_state(nnx.state(jitted)):
        _close(a[...], flat[p][...], {"rtol": 1e-10, "atol": 1e-12})
