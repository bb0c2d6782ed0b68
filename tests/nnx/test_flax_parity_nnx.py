"""jaxnorm.nnx against flax.nnx on what flax accepts (issue 22), and the PyTorch convention (issue 23).

The same (random, non-trivial) values in both modules; outputs, updated
running statistics and gradients (``nnx.grad``) compared under ``nnx.jit``,
and under ``nnx.vmap``/``nnx.scan`` as flax's own transform tests build
them: complex BatchNorm, broadcast masks (flax's outputs at masked
entries), feature axes outside the reduction axes, InstanceNorm's feature
axes and ``(N, C)`` inputs, one value per member, ``nnx.view_info`` /
``nnx.view`` / ``nnx.with_attributes`` on every module, SpectralNorm's zero
kernels; and the modules' ``convention="torch"``: PyTorch's default
momentum and its cumulative average against ``torch.nn.BatchNorm1d``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.linen as jl
import jaxnorm.nnx as jx

TOL = {"rtol": 1e-9, "atol": 1e-10}
# flax.nnx assigns its float64 batch statistics into float32 variables (its own FutureWarning).
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
F32_STAT = {"rtol": 3e-7, "atol": 1e-8}  # float32 running statistics: one rounding apart


def assert_states_close(a, b, **tol):
    """Every variable of two states; the float32 running statistics (flax.nnx's) to their rounding."""
    fa, fb = nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, u), (_, v) in zip(fa, fb):
        t = F32_STAT if u[...].dtype == jnp.float32 else (tol or TOL)
        np.testing.assert_allclose(u[...], v[...], **t, err_msg=str(path))
F64 = {"param_dtype": jnp.float64}


def data(seed, shape, loc=0.0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 1.5 + loc, dtype)


def randomize(*modules, seed=0):
    """The same random values in every module's parameters (scale near 1) and running statistics."""
    rng = np.random.default_rng(seed)
    states = [nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)) for m in modules]
    flat = [nnx.to_flat_state(s) for s in states]
    assert [p for p, _ in flat[0]] == [p for p, _ in flat[-1]]
    for (path, var), *others in zip(*flat):
        name = path[-1]
        noise = rng.standard_normal(var.shape)
        if name in ("var", "sigma"):
            value = 1 + 0.2 * np.abs(noise)
        elif name == "count":
            value = np.zeros(var.shape)
        else:
            value = 0.3 * noise + (name == "scale")
        for v in [var] + [o[1] for o in others]:
            v.set_value(jnp.asarray(value, v.dtype))


def compare(ours, theirs, x, tol=None, **call):
    """Outputs, updated running statistics and gradients (params and x) of two modules with equal values."""
    tol = tol or TOL
    randomize(ours, theirs)
    w = data(9, x.shape)

    @nnx.jit
    def run(model, x):
        def loss(model, x):
            y = model(x, **call)
            return jnp.sum(jnp.real(y * w)), y

        (_, y), grads = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, x)
        return y, grads

    (y_o, (g_o, gx_o)), (y_t, (g_t, gx_t)) = run(ours, x), run(theirs, x)
    assert y_o.dtype == y_t.dtype
    np.testing.assert_allclose(y_o, y_t, **tol)
    np.testing.assert_allclose(gx_o, gx_t, **tol)
    assert_states_close(ours, theirs, **tol)
    g_o, g_t = nnx.to_flat_state(g_o), nnx.to_flat_state(g_t)
    assert [p for p, _ in g_o] == [p for p, _ in g_t]
    for (path, a), (_, b) in zip(g_o, g_t):
        np.testing.assert_allclose(a[...], b[...], **tol, err_msg=str(path))
    return y_o


def both(make):
    return make(jx), make(nnx)


# ---------------------------------------------------------- complex BatchNorm


def test_complex_batch_norm_like_flax_nnx():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 3, 2)) + 1j * rng.standard_normal((6, 3, 2)) + 1 - 1j, jnp.complex64)
    m = jnp.asarray(rng.random((6, 3, 1)) < 0.7)
    ours, theirs = both(lambda ns: ns.BatchNorm(2, momentum=0.9, dtype=jnp.complex64, use_fast_variance=False,
                                                rngs=nnx.Rngs(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting the complex mean to the float32 statistic (as flax.nnx does)
        compare(ours, theirs, x, tol={"rtol": 1e-5, "atol": 1e-5}, mask=m)
    assert ours.mean.dtype == ours.var.dtype == jnp.float32  # flax.nnx keeps its float32 statistics


# ------------------------------------------------------ masks that broadcast


MASKED = {
    "LayerNorm": lambda ns: ns.LayerNorm(6, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)),
    "RMSNorm": lambda ns: ns.RMSNorm(6, **F64, rngs=nnx.Rngs(0)),
    "GroupNorm": lambda ns: ns.GroupNorm(6, 3, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)),
    "InstanceNorm": lambda ns: ns.InstanceNorm(6, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)),
    "BatchNorm": lambda ns: ns.BatchNorm(6, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", list(MASKED))
def test_broadcast_mask_like_flax_nnx(name):
    x = data(1, (4, 3, 6), loc=0.5)
    mask = jnp.asarray([[1], [0], [1]], bool) if name in ("InstanceNorm", "BatchNorm") else \
        jnp.asarray([1, 0, 1, 1, 0, 1], bool)
    compare(*both(MASKED[name]), x, mask=mask)


# ---------------------------------------------- feature axes and (N, C) inputs


@pytest.mark.parametrize("make, shape", [
    (lambda ns: ns.LayerNorm(4, reduction_axes=1, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)), (2, 3, 4)),
    (lambda ns: ns.RMSNorm(12, reduction_axes=-1, feature_axes=(1, 2), **F64, rngs=nnx.Rngs(0)), (2, 3, 4)),
    (lambda ns: ns.InstanceNorm(12, feature_axes=(1, 2), use_fast_variance=False, **F64, rngs=nnx.Rngs(0)),
     (2, 3, 4, 5)),
    (lambda ns: ns.InstanceNorm(6, use_fast_variance=False, **F64, rngs=nnx.Rngs(0)), (4, 6)),
], ids=["LayerNorm-axis1", "RMSNorm-features-(1,2)", "InstanceNorm-(1,2)", "InstanceNorm-(N,C)"])
def test_feature_axes_like_flax_nnx(make, shape):
    ours, theirs = both(make)
    y = compare(ours, theirs, data(2, shape, loc=-0.3))
    if shape == (4, 6):  # every set is one entry: the output is the bias
        np.testing.assert_allclose(y, np.broadcast_to(ours.bias[...], y.shape), **TOL)


def test_instance_norm_feature_axes_with_batch_axis_raise():
    with pytest.raises(ValueError, match=r"InstanceNorm: feature_axes=\(0, 3\) includes axis 0"):
        jx.InstanceNorm(2 * 5, feature_axes=(0, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 3, 4, 5)))


# ------------------------------ one value per member: nnx.vmap and nnx.scan


def _members(ns, n=4):
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=0, out_axes=0)
    def create(rngs):
        return ns.BatchNorm(3, use_fast_variance=False, **F64, rngs=rngs)

    return create(nnx.Rngs(0))


def test_nnx_vmap_members_with_one_value_each_like_flax():
    """Each member sees a (1, C) batch (flax's transform tests): flax returns the bias; so do we, with a warning."""
    ours, theirs = _members(jx), _members(nnx)
    x = data(3, (4, 1, 3))

    @nnx.jit
    def run(model, x):
        return nnx.vmap(lambda m, x: m(x), in_axes=(0, 0), out_axes=0)(model, x)

    randomize(ours, theirs)
    with pytest.warns(UserWarning, match=r"batch_norm: one value per channel"):
        y_o = run(ours, x)
    y_t = run(theirs, x)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    np.testing.assert_allclose(y_o, jnp.broadcast_to(ours.bias[...][:, None], x.shape), **TOL)
    assert_states_close(ours, theirs)


def test_nnx_scan_over_batch_norm_layers_like_flax():
    ours, theirs = _members(jx, 3), _members(nnx, 3)
    x = data(4, (5, 3), loc=1.0)

    @nnx.jit
    def run(model, x):
        def loss(model, x):
            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
            def layers(m, h):
                return jnp.tanh(m(h))

            return jnp.sum(layers(model, x) ** 2)

        return nnx.value_and_grad(loss, argnums=(0, 1))(model, x)

    randomize(ours, theirs)
    (l_o, (g_o, gx_o)), (l_t, (g_t, gx_t)) = run(ours, x), run(theirs, x)
    np.testing.assert_allclose(l_o, l_t, **TOL)
    np.testing.assert_allclose(gx_o, gx_t, **TOL)
    for a, b in zip(jax.tree.leaves(nnx.state(g_o)), jax.tree.leaves(nnx.state(g_t))):
        np.testing.assert_allclose(a, b, **TOL)
    assert_states_close(ours, theirs)


def test_nnx_vmap_with_axis_name_pools_the_members_like_flax():
    ours, theirs = both(lambda ns: ns.BatchNorm(3, axis_name="batch", use_fast_variance=False, **F64,
                                                rngs=nnx.Rngs(0)))
    whole = jx.BatchNorm(3, **F64, rngs=nnx.Rngs(0))
    randomize(ours, theirs, whole)
    x = data(5, (6, 3), loc=2.0)

    @nnx.jit
    def run(model, x):
        return nnx.vmap(lambda m, x: m(x[None])[0], in_axes=(None, 0), out_axes=0, axis_name="batch")(model, x)

    y_o, y_t, y_w = run(ours, x), run(theirs, x), nnx.jit(lambda m, x: m(x))(whole, x)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    np.testing.assert_allclose(y_o, y_w, **TOL)
    assert_states_close(ours, theirs)
    assert_states_close(ours, whole)


# ----------------------------------------- view_info, view, with_attributes


def _every_module():
    r = nnx.Rngs(0)
    return {
        "BatchNorm": jx.BatchNorm(6, rngs=r), "BatchRenorm": jx.BatchRenorm(6, rngs=r),
        "RepresentativeBatchNorm": jx.RepresentativeBatchNorm(6, rngs=r), "EvoNormB0": jx.EvoNormB0(6, rngs=r),
        "SwitchableNorm": jx.SwitchableNorm(6, rngs=r), "LayerNorm": jx.LayerNorm(6, rngs=r),
        "RMSNorm": jx.RMSNorm(6, rngs=r), "GroupNorm": jx.GroupNorm(6, 3, rngs=r),
        "InstanceNorm": jx.InstanceNorm(6, rngs=r), "FilterResponseNorm": jx.FilterResponseNorm(6, rngs=r),
        "EvoNormS0": jx.EvoNormS0(6, 3, rngs=r), "LocalResponseNorm": jx.LocalResponseNorm(),
        "WeightNorm": jx.WeightNorm(nnx.Linear(6, 6, rngs=r), rngs=r),
        "SpectralNorm": jx.SpectralNorm(nnx.Linear(6, 6, rngs=r), rngs=r),
        "StandardizedConv": jx.StandardizedConv(6, 6, (3,), rngs=r),
    }


def test_view_info_view_and_with_attributes_on_every_module():
    class Model(nnx.Module):
        def __init__(self):
            for name, module in _every_module().items():
                setattr(self, name, module)

    model = Model()
    assert set(_every_module()) == set(jx.__all__)
    info = nnx.view_info(model)
    family = ("BatchNorm", "BatchRenorm", "RepresentativeBatchNorm", "EvoNormB0", "SwitchableNorm")
    for name in family:
        assert f"{name}:\n  use_running_average: bool | None = None\n    if True, normalize with the stored" in info
    evaluating = nnx.view(model, use_running_average=True)
    training = nnx.with_attributes(model, use_running_average=False)
    for name in family:
        assert getattr(evaluating, name).use_running_average is True
        assert getattr(training, name).use_running_average is False
        assert getattr(model, name).use_running_average is False  # the original is left alone
    assert nnx.view(model, use_running_average=None).BatchNorm.use_running_average is False
    model.eval()
    assert model.BatchNorm.use_running_average is True and model.SpectralNorm.use_running_average is True


# ----------------------------------------------------- SpectralNorm zero kernels


@pytest.mark.parametrize("recover_from_zero", [False, True])
def test_spectral_norm_zero_kernel_like_flax_nnx(recover_from_zero):
    def make(ns, **kw):
        return ns.SpectralNorm(nnx.Linear(4, 3, **F64, rngs=nnx.Rngs(1)), **F64, rngs=nnx.Rngs(2), **kw)

    ours, theirs = make(jx, recover_from_zero=recover_from_zero), make(nnx)
    for m in (ours, theirs):
        m.layer_instance.kernel.set_value(jnp.zeros((4, 3)))
    x = data(6, (2, 4))
    y_o, y_t = ours(x), theirs(x)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    u_o, u_t = ours.batch_stats[("kernel", "u")][...], theirs.batch_stats[("kernel", "u")][...]
    s_o, s_t = ours.batch_stats[("kernel", "sigma")][...], theirs.batch_stats[("kernel", "sigma")][...]
    if recover_from_zero:  # jaxnorm's option: u kept, σ recorded as 1
        assert np.all(u_o != 0) and s_o == 1
    else:  # flax's: u = 0 and σ = 0, for good
        np.testing.assert_array_equal(u_o, u_t)
        np.testing.assert_array_equal(s_o, s_t)
        assert np.all(u_o == 0) and s_o == 0


# ------------------------------- PyTorch's convention in the modules (issue 23)


def test_modules_torch_convention_momentum_and_cumulative_average_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((8, 4)) * 3 + 2 for _ in range(3)]
    for momentum in ("default", None):
        kw = {} if momentum == "default" else {"momentum": None}
        layer = torch.nn.BatchNorm1d(4, dtype=torch.float64, **kw).train()
        lin = jl.BatchNorm(use_running_average=False, convention="torch", **kw, **F64)
        nx = jx.BatchNorm(4, convention="torch", **kw, **F64, rngs=nnx.Rngs(0))
        v = lin.init(jax.random.key(0), batches[0])
        assert ("count" in v["batch_stats"]) == (momentum is None)
        stats = jn.BatchStats.init(4, jnp.float64)
        lin_step = jax.jit(lambda v, x: lin.apply(v, x, mutable=["batch_stats"]))
        nx_step = nnx.jit(lambda m, x: m(x))
        fn_step = jax.jit(lambda s, x: jn.batch_norm(x, None, None, s, training=True, convention="torch", **kw))
        for x in batches:
            y_t = layer(torch.tensor(x)).detach().numpy()
            y_l, upd = lin_step(v, x)
            v = {**v, **upd}
            y_f, stats = fn_step(stats, x)
            for y in (y_l, nx_step(nx, x), y_f):
                np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-10)
        for mean, var in ((v["batch_stats"]["mean"], v["batch_stats"]["var"]), (stats.mean, stats.var)):
            np.testing.assert_allclose(mean, layer.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(var, layer.running_var.numpy(), rtol=1e-12)
        # the nnx statistics stay float32, as flax.nnx's
        np.testing.assert_allclose(nx.mean[...], layer.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(nx.var[...], layer.running_var.numpy(), rtol=1e-6)
        if momentum is None:
            assert int(v["batch_stats"]["count"]) == int(nx.count[...]) == int(layer.num_batches_tracked) == 3
        else:
            assert not hasattr(nx, "count")
    late = jx.BatchNorm(4, convention="torch", rngs=nnx.Rngs(0))
    late.momentum = None  # the batch count is created at construction only
    with pytest.raises(ValueError, match=r"BatchNorm: convention='torch' with momentum=None .* constructed"):
        late(jnp.ones((2, 4)))
