"""jaxnorm.linen against flax.linen on what flax accepts (issue 22), and the functions beneath.

Each test runs flax.linen's module and jaxnorm's on the same variables and
inputs and compares outputs, updated ``batch_stats`` and gradients (with
respect to the parameters and the input), in float64 unless the point is a
dtype: complex BatchNorm, ``axis_name`` during ``init``, feature axes
outside the reduction axes, InstanceNorm's feature axes and ``(N, C)``
inputs, masks that broadcast (flax's outputs at masked entries), one value
per channel in training, SpectralNorm across training steps, ``nn.scan``.
Where jaxnorm and flax differ beyond rounding it is flax's float32 formula
(the last tests measure both against float64). Comparisons run under
``jax.jit`` (one compilation per case: much faster than op-by-op here), and
under ``vmap``/``nn.vmap``/``nn.scan`` where the issue names them.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.test_util import check_grads

import jaxnorm as jn
import jaxnorm.linen as jl

F64 = {"param_dtype": jnp.float64}
TOL = {"rtol": 1e-9, "atol": 1e-10}
KEY = jax.random.key(0)
UNIFORM = {"scale_init": nn.initializers.uniform(), "bias_init": nn.initializers.uniform()}


def data(seed, shape, loc=0.0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 1.5 + loc, dtype)


def assert_tree_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert p.dtype == q.dtype
        np.testing.assert_allclose(p, q, **(tol or TOL))


def perturbed(params, seed=1):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return tree.unflatten([p + (0.3 * rng.standard_normal(p.shape)).astype(p.dtype) for p in leaves])


def variables_like(ours, theirs, *args, seed=1, **call):
    """Random values in the variables both modules declare (checked: same tree, shapes, dtypes).

    Built from ``jax.eval_shape`` of ``init``: compiling the initializers' random
    number generation costs seconds per module. Values are non-trivial: scale
    near 1, var in [1, 1.2], a zero bias where the name says so (``zero_bias``).
    """
    shapes = jax.eval_shape(lambda *a: theirs.init(KEY, *a, **call), *args)
    ours_shapes = jax.eval_shape(lambda *a: ours.init(KEY, *a, **call), *args)
    assert jax.tree.structure(ours_shapes) == jax.tree.structure(shapes)
    assert jax.tree.leaves(ours_shapes) == jax.tree.leaves(shapes)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(path[-1].key).rsplit("/", 1)[-1]
        noise = rng.standard_normal(s.shape)
        if name in ("var", "sigma"):
            return jnp.asarray(1 + 0.2 * np.abs(noise), s.dtype)
        if name == "count":
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(noise * 0.3 + (name == "scale"), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def compare(ours, theirs, x, *, mutable=False, tol=None, **call):
    """Same variables (flax's init, perturbed) for both: outputs, updates, gradients of params and x."""
    tol = tol or TOL
    v = variables_like(ours, theirs, x, **call)
    params = v.get("params", {})
    rest = {k: t for k, t in v.items() if k != "params"}
    w = data(9, x.shape)

    def run(model, params, x):
        out = model.apply({"params": params, **rest}, x, mutable=["batch_stats"] if mutable else False, **call)
        y, upd = out if mutable else (out, {})
        return jnp.sum(jnp.real(y * w)), (y, upd)

    grad = jax.value_and_grad(run, argnums=(1, 2), has_aux=True)
    both = jax.jit(lambda params, x: (grad(ours, params, x), grad(theirs, params, x)))
    ((_, (y_o, u_o)), g_o), ((_, (y_t, u_t)), g_t) = both(params, x)
    assert y_o.dtype == y_t.dtype
    np.testing.assert_allclose(y_o, y_t, **tol)
    # flax.linen forms momentum·old in the float32 of the stored statistics: |old|·6e-8 apart.
    assert_tree_close(u_o, u_t, rtol=max(tol["rtol"], 1e-7), atol=max(tol["atol"], 1e-8))
    assert_tree_close(g_o, g_t, **tol)
    return y_o, params


# ------------------------------------------------------- 1. complex BatchNorm


@pytest.mark.parametrize("masked", [False, True])
def test_complex_batch_norm_matches_flax_and_complex128(masked):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 3, 2)) + 1j * rng.standard_normal((6, 3, 2)) + (0.5 - 2j)).astype(np.complex64)
    mask = rng.random((6, 3, 1)) < 0.7 if masked else None
    kw = {"use_running_average": False, "momentum": 0.9, "dtype": jnp.complex64}
    ours, theirs = jl.BatchNorm(**kw), nn.BatchNorm(**kw, use_fast_variance=False)
    v = variables_like(ours, theirs, x, mask=mask)
    variables = {"params": v["params"], "batch_stats": {"mean": jnp.zeros(2, jnp.float32), "var": jnp.ones(2, jnp.float32)}}
    w = jnp.asarray(rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape), jnp.complex64)

    def run(model, params, x):
        y, upd = model.apply({**variables, "params": params}, x, mask=mask, mutable=["batch_stats"])
        return jnp.sum(jnp.real(y * jnp.conj(w))), (y, upd)

    grad = jax.grad(run, argnums=(1, 2), has_aux=True)
    (g_o, (y_o, u_o)), (g_t, (y_t, u_t)) = jax.jit(
        lambda p, x: (grad(ours, p, x), grad(theirs, p, x)))(variables["params"], x)
    assert y_o.dtype == y_t.dtype == jnp.complex64
    assert u_o["batch_stats"]["mean"].dtype == u_t["batch_stats"]["mean"].dtype == jnp.complex64
    assert u_o["batch_stats"]["var"].dtype == u_t["batch_stats"]["var"].dtype == jnp.float32

    # complex128 reference: complex mean, real variance E|x − μ|², every entry normalized.
    xd = x.astype(np.complex128)
    sel = np.broadcast_to(True if mask is None else mask, x.shape)
    mu = np.array([xd[..., c][sel[..., c]].mean() for c in range(2)])
    var = np.array([(np.abs(xd[..., c][sel[..., c]] - mu[c]) ** 2).mean() for c in range(2)])
    p = variables["params"]
    ref = (xd - mu) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(y_o, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_o, y_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(u_o["batch_stats"]["mean"], 0.1 * mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(u_o["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-6)
    assert_tree_close(u_o, u_t, rtol=1e-5, atol=1e-6)
    assert_tree_close(g_o, g_t, rtol=1e-4, atol=1e-5)
    # inference: the complex running mean is used as it is
    u = {**variables, **u_o}
    eval_o, eval_t = (m.clone(use_running_average=True).apply(u, x) for m in (ours, theirs))
    np.testing.assert_allclose(eval_o, eval_t, rtol=1e-6, atol=1e-6)


def test_complex_batch_norm_function_vmap_ghost_torch_and_exactness():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4, 3)) + 1j * rng.standard_normal((8, 4, 3))
    stats = jn.BatchStats.init(3, jnp.float64)
    bn = functools.partial(jn.batch_norm, scale=None, bias=None, stats=stats, training=True)

    @jax.jit
    def calls(x):
        per = jax.vmap(lambda xi: bn(xi, axis_name="b"), axis_name="b", out_axes=(0, None))(x)
        ghost = bn(x, virtual_batch_size=4, convention="torch")
        return bn(x), per, ghost, bn(x[:4])[0], bn(x[4:])[0]

    whole, per, (y, new), y0, y1 = calls(x)
    assert_tree_close(per, whole)
    # Ghost BatchNorm: each virtual batch by itself; PyTorch's unbiased running variance.
    np.testing.assert_allclose(y, np.concatenate([y0, y1]), **TOL)
    var = sum((np.abs(x[4 * g:4 * g + 4] - x[4 * g:4 * g + 4].mean((0, 1))) ** 2).sum((0, 1)) / 15 for g in range(2)) / 2
    np.testing.assert_allclose(new.var, 0.9 + 0.1 * var, **TOL)
    np.testing.assert_allclose(new.mean, 0.1 * x.mean((0, 1)), **TOL)
    # complex64 far from zero: exact against complex128, where E|x|² − |E x|² (flax's default) is not.
    xf = (x * 0.5 + (1e4 - 3e4j)).astype(np.complex64)
    xd = xf.astype(np.complex128)
    mu = xd.mean((0, 1))
    ref = (xd - mu) / np.sqrt((np.abs(xd - mu) ** 2).mean((0, 1)) + 1e-5)
    ours = jax.jit(lambda x: jn.batch_norm(x, None, None, jn.BatchStats.init(3), training=True)[0])(xf)
    flax_bn = nn.BatchNorm(use_running_average=False, use_bias=False, use_scale=False)
    theirs = jax.jit(lambda x: flax_bn.init_with_output(KEY, x)[0])(xf)
    err_ours, err_theirs = np.abs(ours - ref).max(), np.abs(theirs - ref).max()
    assert err_ours < 1e-5 < err_theirs


# --------------------------------------------- 2. axis_name during init


def test_axis_name_is_ignored_during_init():
    x = data(2, (8, 3))
    for cls in ("BatchRenorm", "RepresentativeBatchNorm", "EvoNormB0", "SwitchableNorm"):
        v = jax.eval_shape(getattr(jl, cls)(use_running_average=False, axis_name="batch", **F64).init, KEY, x)
        assert v["batch_stats"]["mean"].shape == (3,)
    module = jl.BatchNorm(use_running_average=False, axis_name="batch", **F64)
    flax_module = nn.BatchNorm(use_running_average=False, axis_name="batch", use_fast_variance=False, **F64)
    # init traces the modules outside any transformation binding "batch" (eval_shape: no RNG to compile)
    v = variables_like(module, flax_module, x)

    @jax.jit
    def run(v, x):
        def per_example(model):
            return jax.vmap(lambda xi: model.apply(v, xi[None], mutable=["batch_stats"]), axis_name="batch",
                            out_axes=(0, None))(x)

        return per_example(module), per_example(flax_module), module.clone(axis_name=None).apply(
            v, x, mutable=["batch_stats"])

    (y_o, u_o), (y_t, u_t), (y_w, u_w) = run(v, x)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    assert_tree_close(u_o, u_t, rtol=1e-7, atol=1e-10)  # flax's momentum·old in float32
    # the members pool to the whole batch
    np.testing.assert_allclose(y_o[:, 0], y_w, **TOL)
    assert_tree_close(u_o, u_w)


# ------------------------------- 3. LayerNorm/RMSNorm feature axes anywhere


@pytest.mark.parametrize("cls, kw", [
    ("LayerNorm", {"reduction_axes": -2, "feature_axes": (1, 3)}),
    ("LayerNorm", {"reduction_axes": (1, 2), "feature_axes": (2, 3)}),
    ("LayerNorm", {"reduction_axes": (0, 1, 2), "feature_axes": ()}),
    ("RMSNorm", {"reduction_axes": 1}),
], ids=str)
def test_feature_axes_outside_reduction_axes(cls, kw):
    x = data(3, (2, 3, 4, 5), loc=0.7)
    extra = UNIFORM if cls == "LayerNorm" else {"scale_init": nn.initializers.uniform()}
    compare(getattr(jl, cls)(**kw, **extra, **F64), getattr(nn, cls)(**kw, **extra, use_fast_variance=False, **F64), x)


def test_feature_axes_function_under_jit_and_per_example():
    x = data(4, (2, 3, 4))
    scale, bias = data(5, (4,)), data(6, (2, 4))  # bias per example (axis 0) and feature (axis 2)
    f = jax.jit(lambda x, s, b: jn.layer_norm(x, s, b, axis=1, feature_axes=-1))
    xd = np.asarray(x)
    ref = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-5) * np.asarray(scale) \
        + np.asarray(bias)[:, None, :]
    np.testing.assert_allclose(f(x, scale, bias), ref, **TOL)
    with pytest.raises(ValueError, match=r"layer_norm: scale must have shape \(4,\) \(the feature axes' shape\)"):
        jn.layer_norm(x, data(0, (3,)), axis=1, feature_axes=2)


# ------------------------------------ 4. InstanceNorm feature axes, (N, C)


def test_instance_norm_several_feature_axes():
    x, kw = data(7, (2, 3, 4, 5), loc=-0.4), {"feature_axes": (1, -1)}
    compare(jl.InstanceNorm(**kw, **UNIFORM, **F64), nn.InstanceNorm(**kw, **UNIFORM, use_fast_variance=False, **F64),
            x)


def test_instance_norm_rank_2_gives_bias_and_bad_feature_axes_raise():
    x = data(8, (4, 6))
    y, params = compare(jl.InstanceNorm(**UNIFORM, **F64), nn.InstanceNorm(**UNIFORM, use_fast_variance=False, **F64),
                        x)
    np.testing.assert_allclose(y, np.broadcast_to(params["bias"], x.shape), **TOL)
    for bad in [0, -4, (0, 3), (2, -4)]:
        with pytest.raises(ValueError, match=r"InstanceNorm: feature_axes=.* axis 0 .* batch"):
            jl.InstanceNorm(feature_axes=bad).init(KEY, data(0, (2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"InstanceNorm: feature_axes=7"):
        jl.InstanceNorm(feature_axes=7).init(KEY, data(0, (2, 3, 4, 5)))


# --------------------------------------------------- 5. masks that broadcast


MASK_CASES = {
    "LayerNorm-(C,)": (lambda ns: ns.LayerNorm(**UNIFORM, **F64), (4, 5), [True, False, True, True, False]),
    "GroupNorm-(C,)": (lambda ns: ns.GroupNorm(3, **UNIFORM, **F64), (4, 3, 6), [1, 0, 1, 1, 0, 1]),
    # flax's GroupNorm needs the mask's channel axis in full: (N, 1, C)
    "GroupNorm-(N,1,C)": (lambda ns: ns.GroupNorm(3, **F64), (4, 3, 6), np.arange(24).reshape(4, 1, 6) % 5 > 0),
    "BatchNorm-(T,1)": (lambda ns: ns.BatchNorm(use_running_average=False, **UNIFORM, **F64), (4, 3, 6),
                        [[1], [0], [1]]),
    # several feature axes (statistics and parameters of shape (3, 6)), a mask over the batch
    "BatchNorm-axis-(1,2)-(N,1,1)": (lambda ns: ns.BatchNorm(use_running_average=False, axis=(1, 2), **UNIFORM,
                                                           **F64), (4, 3, 6), [[[1]], [[0]], [[1]], [[1]]]),
}


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_broadcast_masks_give_flax_numbers(name):
    make, shape, mask = MASK_CASES[name]
    x, mask = data(10, shape, loc=0.3), jnp.asarray(mask, bool)
    compare(make(jl), make(nn).clone(use_fast_variance=False), x, mutable=name.startswith("BatchNorm"), mask=mask)


def test_broadcast_mask_functions_and_masked_output():
    """``where`` of any broadcastable shape equals the mask spelled out; "zero" vs "normalized"."""
    x = np.asarray(data(11, (4, 3, 6)))
    x_nan = x.copy()
    m = np.array([1, 0, 1, 1, 0, 1], bool)
    x_nan[..., ~m] = np.nan  # masked entries never reach a statistic
    full = np.broadcast_to(m, x.shape)
    calls = {
        "layer_norm": lambda x, w, o: jn.layer_norm(x, where=w, masked_output=o),
        "rms_norm": lambda x, w, o: jn.rms_norm(x, where=w, masked_output=o),
        "group_norm": lambda x, w, o: jn.group_norm(x, num_groups=3, where=w, masked_output=o),
        "batch_norm": lambda x, w, o: jn.batch_norm(x, None, None, jn.BatchStats.init(6, jnp.float64),
                                                    training=True, where=w, masked_output=o)[0],
    }
    g = data(12, x.shape)

    @jax.jit
    def run(x_nan, x):
        return {name: (f(x_nan, m, "zero"), f(x_nan, full, "zero"), f(x, m, "normalized"),
                       jax.grad(lambda x: jnp.sum(f(x, m, "zero") * g))(x_nan)) for name, f in calls.items()}

    for name, (y_zero, y_full, y_norm, dx) in run(x_nan, x).items():
        np.testing.assert_array_equal(y_zero, y_full)
        np.testing.assert_array_equal(np.asarray(y_zero)[..., ~m], 0)
        assert np.all(np.isfinite(dx)) and np.all(np.asarray(dx)[..., ~m] == 0), name
        np.testing.assert_allclose(np.asarray(y_norm)[..., m], np.asarray(y_zero)[..., m], **TOL)
        assert np.all(np.abs(np.asarray(y_norm)[..., ~m]) > 0), name
    # "normalized" as flax: the masked entries follow the selected entries' statistics
    sel = x[..., m]
    mu, sd = sel.mean(-1, keepdims=True), np.sqrt(sel.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(run(x_nan, x)["layer_norm"][2], (x - mu) / sd, **TOL)
    # and differentiates as such, in both modes of differentiation
    w = jnp.asarray(np.broadcast_to(m, (2, 6)))
    check_grads(jax.jit(lambda x: jn.layer_norm(x, where=w, masked_output="normalized")), (x[0, :2],),
                order=1, modes=("fwd", "rev"))
    with pytest.raises(ValueError, match=r"layer_norm: masked_output must be 'zero' or 'normalized', got 'nan'"):
        jn.layer_norm(x, where=m, masked_output="nan")


def test_traced_broadcast_mask_under_jit_and_vmap():
    x, m = data(13, (4, 3, 6)), jnp.asarray([[1], [0], [1]], bool)
    module, flax_module = jl.InstanceNorm(**F64), nn.InstanceNorm(use_fast_variance=False, **F64)
    v = variables_like(module, flax_module, x, mask=m)
    y = jax.jit(lambda x: flax_module.apply(v, x, mask=m))(x)

    @jax.jit
    def ours(x, m):  # the mask a traced argument, and per example under vmap
        return module.apply(v, x, mask=m), jax.vmap(lambda xi: module.apply(v, xi[None], mask=m)[0])(x)

    for y_o in ours(x, m):
        np.testing.assert_allclose(y_o, y, **TOL)


# ------------------------------------------- 6. one value per channel


def test_batch_norm_one_value_per_channel_warns_and_gives_bias():
    x = data(14, (1, 3))
    with pytest.warns(UserWarning, match=r"batch_norm: one value per channel"):
        compare(jl.BatchNorm(use_running_average=False, **UNIFORM, **F64),
                nn.BatchNorm(use_running_average=False, use_fast_variance=False, **UNIFORM, **F64), x, mutable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a rank-1 input: one value per channel too (flax returns the bias)
        compare(jl.BatchNorm(use_running_average=False, axis=0, **UNIFORM, **F64),
                nn.BatchNorm(use_running_average=False, axis=0, use_fast_variance=False, **UNIFORM, **F64),
                x[0], mutable=True)
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel"):
        jl.BatchNorm(use_running_average=False, convention="torch").init(KEY, x)


def test_nn_vmap_members_without_axis_name_like_flax():
    x = data(15, (5, 1, 3))

    def stacked(ns):
        return nn.vmap(ns.BatchNorm, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True},
                       in_axes=0)(use_running_average=False, **UNIFORM, **F64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(stacked(jl), stacked(nn), x, mutable=True)


# -------------------------------------------------------------- nn.scan


def test_nn_scan_over_batch_norm_layers_like_flax():
    class Block(nn.Module):
        ns: object

        @nn.compact
        def __call__(self, h, _):
            h = nn.Dense(3, param_dtype=jnp.float64)(h)
            return self.ns.BatchNorm(use_running_average=False, momentum=0.8, **F64)(h), None

    Stack = nn.scan(Block, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True}, length=3)

    class Model(nn.Module):
        ns: object

        @nn.compact
        def __call__(self, x):
            return Stack(self.ns, name="layers")(x, None)[0]

    x = data(16, (6, 3), loc=2.0)
    compare(Model(jl), Model(nn), x, mutable=True)


# ------------------------------------------- 8. SpectralNorm across steps


class HeadsModel(nn.Module):
    """A spectrally normalized DenseGeneral to (heads, head_dim): its zero-initialized bias is such a
    (heads, head_dim) kernel, as MultiHeadDotProductAttention's q/k/v biases are."""

    ns: object
    recover_from_zero: bool = False

    @nn.compact
    def __call__(self, x, train):
        extra = {"recover_from_zero": True} if self.recover_from_zero else {}
        h = self.ns.SpectralNorm(nn.DenseGeneral((2, 3)), **extra)(nn.Dense(4)(x), update_stats=train)
        return nn.Dense(4)(h.reshape(h.shape[0], -1))


def _train(model, steps=2):
    x, target = jax.random.normal(jax.random.key(1), (1, 4)), jax.random.normal(jax.random.key(2), (1, 4))
    v = variables_like(HeadsModel(jl), HeadsModel(nn), x, train=False, seed=3)
    # the zero-initialized (heads, head_dim) bias, as at initialization
    v["params"]["DenseGeneral_0"]["bias"] *= 0
    params, stats = v["params"], v["batch_stats"]
    opt = optax.sgd(0.1)
    state = opt.init(params)

    def loss(params, stats):
        y, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean((y - target) ** 2), upd["batch_stats"]

    @jax.jit
    def step(params, stats, state):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), stats, state, value

    losses = []
    for _ in range(steps):
        params, stats, state, value = step(params, stats, state)
        losses.append(float(value))
    return np.array(losses), stats


def test_spectral_norm_trains_like_flax_and_recovering_is_an_option():
    ours, ours_stats = _train(HeadsModel(jl))
    theirs, theirs_stats = _train(HeadsModel(nn))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert_tree_close(ours_stats, theirs_stats, rtol=1e-4, atol=1e-6)
    bias = "DenseGeneral_0/bias"
    np.testing.assert_array_equal(ours_stats["SpectralNorm_0"][f"{bias}/u"], 0)  # flax's: u = 0 for good
    np.testing.assert_array_equal(ours_stats["SpectralNorm_0"][f"{bias}/sigma"], 0)
    recovering, rec_stats = _train(HeadsModel(jl, recover_from_zero=True))
    assert recovering[0] == pytest.approx(ours[0], rel=1e-6)  # the same first step,
    assert np.abs(recovering[1:] - ours[1:]).max() > 1e-4  # then the bias is divided by its σ
    assert np.any(rec_stats["SpectralNorm_0"][f"{bias}/u"] != 0)


def test_spectral_norm_has_no_while_loop():
    w = data(17, (5, 3))
    text = jax.jit(lambda w, u: jn.spectral_norm(w, u, n_iterations=4)).lower(w, jnp.ones(3)).as_text()
    assert "while" not in text and "stablehlo.while" not in text


# ------------------------------------- float32: flax's formula loses digits


def test_flax_float32_tests_that_differ_are_flax_rounding():
    """flax's LayerNorm test at mean 1e6 and InstanceNorm test at 1e4 compare with float32 one-liners."""
    rng = np.random.default_rng(0)
    for module, flax_module, loc, axes in [
        (jl.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-5),
         nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-5, use_fast_variance=False), 1e6, (3,)),
        (jl.InstanceNorm(use_bias=False, use_scale=False, epsilon=1e-5),
         nn.InstanceNorm(use_bias=False, use_scale=False, epsilon=1e-5, use_fast_variance=False), 1e4, (1, 2)),
    ]:
        x = (rng.standard_normal((2, 3, 4, 5)) + loc).astype(np.float32)
        xd = x.astype(np.float64)
        ref = (xd - xd.mean(axes, keepdims=True)) / np.sqrt(xd.var(axes, keepdims=True) + 1e-5)
        one_liner = (x - x.mean(axes, keepdims=True)) * jax.lax.rsqrt(x.var(axes, keepdims=True) + 1e-5)
        err_ours = np.abs(jax.jit(lambda x: module.apply({}, x))(x) - ref).max()
        err_flax = np.abs(jax.jit(lambda x: flax_module.apply({}, x))(x) - ref).max()
        err_one_liner = np.abs(np.asarray(one_liner) - ref).max()
        assert err_ours < 1e-6, err_ours
        assert err_ours * 100 < min(err_flax, err_one_liner), (err_ours, err_flax, err_one_liner)


# ------------------------------------------------------ 9. from_torch


def test_from_torch_without_bias_and_with_cumulative_momentum():
    torch = pytest.importorskip("torch")
    from jaxnorm.torch_import import from_torch

    rng = np.random.default_rng(20)
    batches = [rng.standard_normal((4, 6, 5)) * 2 + 1 for _ in range(3)]  # NCL
    layers = [torch.nn.GroupNorm(3, 6, bias=False), torch.nn.BatchNorm1d(6, bias=False),
              torch.nn.InstanceNorm1d(6, affine=True, bias=False),
              torch.nn.BatchNorm1d(6, momentum=None)]
    for layer in layers:
        layer = layer.double().train()
        if layer.weight is not None:
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5)
        module, variables = from_torch(layer)
        assert ("bias" in variables.get("params", {})) == (layer.bias is not None) == module.use_bias
        is_bn = isinstance(layer, torch.nn.BatchNorm1d)
        apply = jax.jit(lambda v, x: module.apply(v, x, use_running_average=False, mutable=["batch_stats"])
                        if is_bn else (module.apply(v, x), {}))
        for x in batches:
            y_t = layer(torch.tensor(x)).detach().numpy()
            y, updates = apply(variables, jnp.asarray(x.transpose(0, 2, 1)))
            np.testing.assert_allclose(np.asarray(y).transpose(0, 2, 1), y_t, rtol=1e-10, atol=1e-10)
            variables = {**variables, **updates}
        if is_bn:
            stats = variables["batch_stats"]
            np.testing.assert_allclose(stats["mean"], layer.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(stats["var"], layer.running_var.numpy(), rtol=1e-12)
            if layer.momentum is None:  # PyTorch's cumulative average: the count travels along
                assert module.momentum is None and int(stats["count"]) == int(layer.num_batches_tracked) == 3
