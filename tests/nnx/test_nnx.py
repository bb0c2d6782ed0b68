"""jaxnorm.nnx: the Flax NNX modules against jaxnorm.linen and flax.nnx.

* Every module against its jaxnorm.linen twin holding the same (random,
  non-trivial) parameter and running-statistic values: outputs, updated
  running statistics in training, untouched ones in eval, and gradients with
  respect to the parameters and the input (``nnx.grad`` against ``jax.grad``
  of ``apply``), in float64 with tight tolerances.
* The five modules named as in flax.nnx (BatchNorm, LayerNorm, RMSNorm,
  GroupNorm, InstanceNorm) as drop-ins: same constructor/call signatures,
  same variables and initial values, and the same numbers as flax.nnx's own
  module (``use_fast_variance=False``) on the same values; output dtypes.
* The NNX train/eval switch (``train()``, ``eval()``, ``nnx.view``, the
  call argument), ``nnx.jit`` train steps, and errors at construction or at
  the first call.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.linen as jl
import jaxnorm.nnx as jx

C = 6
X, XT = (4, 3, C), (4, C, 3)  # one input shape (and its NCHW twin) everywhere: primitives compile once
TOL = {"rtol": 1e-10, "atol": 1e-11}
F64 = {"param_dtype": jnp.float64}

PARAM_NAMES = ("scale", "bias", "tau", "v", "center_weight", "scale_weight", "scale_bias", "mean_logits",
               "var_logits")

# name -> (factory(namespace, **kwargs), linen module, input shape, has running statistics).
# The factory builds the module from ``jaxnorm.nnx`` (or ``flax.nnx`` for the
# five flax names), the linen module is the jaxnorm.linen twin.
CASES = {
    "BatchNorm": (lambda ns, **k: ns.BatchNorm(C, **k), jl.BatchNorm(**F64), X, True),
    "BatchNorm-nchw-momentum": (
        lambda ns, **k: ns.BatchNorm(C, axis=1, momentum=0.9, epsilon=1e-3, **k),
        jl.BatchNorm(axis=1, momentum=0.9, epsilon=1e-3, **F64), XT, True),
    "BatchNorm-ghost-torch": (
        lambda ns, **k: ns.BatchNorm(C, virtual_batch_size=2, convention="torch", momentum=0.2, **k),
        jl.BatchNorm(virtual_batch_size=2, convention="torch", momentum=0.2, **F64), X, True),
    "BatchRenorm": (lambda ns, **k: ns.BatchRenorm(C, r_max=1.2, d_max=0.3, **k),
                    jl.BatchRenorm(r_max=1.2, d_max=0.3, **F64), X, True),
    "RepresentativeBatchNorm": (lambda ns, **k: ns.RepresentativeBatchNorm(C, **k),
                                jl.RepresentativeBatchNorm(**F64), X, True),
    "EvoNormB0": (lambda ns, **k: ns.EvoNormB0(C, momentum=0.8, **k), jl.EvoNormB0(momentum=0.8, **F64),
                  X, True),
    "SwitchableNorm": (lambda ns, **k: ns.SwitchableNorm(C, **k), jl.SwitchableNorm(**F64), X, True),
    "LayerNorm": (lambda ns, **k: ns.LayerNorm(C, **k), jl.LayerNorm(**F64), X, False),
    "LayerNorm-2-feature-axes": (
        lambda ns, **k: ns.LayerNorm(3 * C, reduction_axes=(1, 2), feature_axes=(1, 2), **k),
        jl.LayerNorm(reduction_axes=(1, 2), feature_axes=(1, 2), **F64), X, False),
    "RMSNorm": (lambda ns, **k: ns.RMSNorm(C, **k), jl.RMSNorm(**F64), X, False),
    "RMSNorm-axes": (lambda ns, **k: ns.RMSNorm(C, reduction_axes=(1, 2), **k),
                     jl.RMSNorm(reduction_axes=(1, 2), **F64), X, False),
    "GroupNorm": (lambda ns, **k: ns.GroupNorm(C, 3, **k), jl.GroupNorm(3, **F64), X, False),
    "GroupNorm-group_size": (lambda ns, **k: ns.GroupNorm(C, None, 2, epsilon=1e-3, **k),
                             jl.GroupNorm(num_groups=None, group_size=2, epsilon=1e-3, **F64), X,
                             False),
    "GroupNorm-reduction_axes": (lambda ns, **k: ns.GroupNorm(C, 2, reduction_axes=(2,), **k),
                                 jl.GroupNorm(2, reduction_axes=(2,), **F64), X, False),
    "InstanceNorm": (lambda ns, **k: ns.InstanceNorm(C, **k), jl.InstanceNorm(**F64), X, False),
    "FilterResponseNorm": (lambda ns, **k: ns.FilterResponseNorm(C, **k), jl.FilterResponseNorm(**F64),
                           X, False),
    "FilterResponseNorm-nchw-no-tau": (
        lambda ns, **k: ns.FilterResponseNorm(C, use_tau=False, channel_axis=1, **k),
        jl.FilterResponseNorm(use_tau=False, channel_axis=1, **F64), XT, False),
    "EvoNormS0": (lambda ns, **k: ns.EvoNormS0(C, 3, **k), jl.EvoNormS0(num_groups=3, **F64), X, False),
    "LocalResponseNorm": (lambda ns, **k: ns.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5),
                          jl.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5), X, False),
}
# Not against flax.nnx: jaxnorm-only options (ghost/torch), and GroupNorm with reduction_axes
# leaving out axis 1, where flax.nnx 0.12.8 repeats the group statistics along axis 1
# instead of the group axis (wrong numbers; see test_groupnorm_reduction_axes_against_numpy).
FLAX_NAMED = [n for n in CASES if n.split("-")[0] in {"BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm",
                                                       "InstanceNorm"}
              and n not in ("BatchNorm-ghost-torch", "GroupNorm-reduction_axes")]
BATCH = [n for n, case in CASES.items() if case[3]]


# ----------------------------------------------------------------- helpers --


def modes(names):
    """``(name, training)`` parameters: both modes with running statistics, else one."""
    return [pytest.param(n, t, id=f"{n}-{'train' if t else 'eval'}")
            for n in names for t in ((True, False) if CASES[n][3] else (False,))]


def _data(seed, shape, loc=1.5):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-loc, loc) + rng.uniform(0.5, 2.0) * rng.standard_normal(shape))


def build(name, ns=jx, **kwargs):
    factory = CASES[name][0]
    if name.startswith("LocalResponseNorm"):
        return factory(ns)
    return factory(ns, rngs=nnx.Rngs(0), **F64, **kwargs)


def variables(m):
    """``{name: nnx.Variable}`` of a module's parameters and running statistics."""
    names = PARAM_NAMES + ("mean", "var")
    return {n: getattr(m, n) for n in names if isinstance(getattr(m, n, None), nnx.Variable)}


def randomize(m, seed=0):
    """Random non-trivial float64 values in every variable; returns them as a dict."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, var in variables(m).items():
        shape = var[...].shape
        if name in ("scale", "scale_bias"):
            v = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            v = rng.uniform(0.5, 2.0, shape)
        else:
            v = 0.7 * rng.standard_normal(shape)
        values[name] = jnp.asarray(v, jnp.float64)
        var.set_value(values[name])
    return values


def copy_values(src, dst):
    for name, var in variables(src).items():
        getattr(dst, name).set_value(var[...])


def call_kwargs(name, training):
    return {"use_running_average": not training} if CASES[name][3] else {}


def linen_variables(name, values, x, training):
    """The linen twin's variables holding ``values`` (reshaped to linen's parameter shapes)."""
    lm = CASES[name][1]
    init = jax.eval_shape(lambda: lm.init(jax.random.key(1), x, **call_kwargs(name, False)))
    params = {k: values[k].reshape(v.shape) for k, v in init.get("params", {}).items()}
    assert set(params) == {k for k in values if k not in ("mean", "var")}, (params.keys(), values.keys())
    stats = {k: values[k] for k in init.get("batch_stats", {})}
    return lm, params, stats


def assert_tree_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **(tol or TOL))


def weights(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@pytest.fixture
def eager():
    """Run without jit: each primitive compiles once for all tests (the comparisons are
    of module plumbing; jit is covered by the nnx.jit and error tests)."""
    with jax.disable_jit():
        yield


# ------------------------------------------------- against jaxnorm.linen --


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("name,training", modes(CASES))
def test_matches_linen(name, training):
    m = build(name)
    values = randomize(m, seed=len(name))
    fresh = nnx.clone(m)
    x = _data(1, CASES[name][2])
    kw = call_kwargs(name, training)
    lm, params, stats = linen_variables(name, values, x, training)

    y = m(x, **kw)
    y_linen, updated = lm.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"], **kw)
    assert y.dtype == y_linen.dtype == jnp.float64
    np.testing.assert_allclose(y, y_linen, **TOL)
    assert np.abs(np.asarray(y) - np.asarray(x)).max() > 1e-3  # not an identity
    if CASES[name][3]:
        for s in ("mean", "var"):
            got = getattr(m, s)[...]
            if training:
                np.testing.assert_allclose(got, updated["batch_stats"][s], **TOL)
                assert not np.allclose(got, values[s])
            else:
                np.testing.assert_array_equal(got, values[s])
                np.testing.assert_array_equal(updated["batch_stats"][s], values[s])

    w = weights(2, x.shape)

    def loss_nnx(m, x):
        return jnp.sum(m(x, **kw) * w)

    def loss_linen(p, x):
        y, _ = lm.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"], **kw)
        return jnp.sum(y * w)

    g_nnx, gx_nnx = nnx.grad(loss_nnx, argnums=(0, 1))(fresh, x)
    g_linen, gx_linen = jax.grad(loss_linen, argnums=(0, 1))(params, x)
    g_nnx = {k: v.reshape(g_linen[k].shape) for k, v in nnx.to_pure_dict(g_nnx).items()}
    assert_tree_close(g_nnx, g_linen)
    np.testing.assert_allclose(gx_nnx, gx_linen, **TOL)
    assert all(np.abs(np.asarray(g)).max() > 1e-6 for g in jax.tree.leaves(g_linen))


# --------------------------------------------------- drop-in for flax.nnx --


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("name,training", modes(FLAX_NAMED))
def test_matches_flax_nnx(name, training):
    ours = build(name)
    randomize(ours, seed=3)
    theirs = build(name, ns=nnx, use_fast_variance=False)
    copy_values(ours, theirs)
    ours_fresh, theirs_fresh = nnx.clone(ours), nnx.clone(theirs)
    x = _data(4, CASES[name][2])
    kw = call_kwargs(name, training)
    mask = jnp.asarray(np.random.default_rng(5).random(x.shape) < 0.8)
    y_ours, y_theirs = ours(x, **kw, mask=mask), theirs(x, **kw, mask=mask)
    # The modules normalize masked entries too, with the selected entries' statistics, as flax does.
    np.testing.assert_allclose(y_ours, y_theirs, **TOL)
    for s in ("mean", "var") if CASES[name][3] else ():
        np.testing.assert_allclose(getattr(ours, s)[...], getattr(theirs, s)[...], **TOL)
    # and without a mask, everywhere
    if training or not CASES[name][3]:
        np.testing.assert_allclose(ours(x, **kw), theirs(x, **kw), **TOL)

    w = weights(6, x.shape)  # the masked outputs too: their derivatives are flax's

    def loss(m, x):
        return jnp.sum(m(x, **kw, mask=mask) * w)

    g_ours, gx_ours = nnx.grad(loss, argnums=(0, 1))(ours_fresh, x)
    g_theirs, gx_theirs = nnx.grad(loss, argnums=(0, 1))(theirs_fresh, x)
    assert_tree_close(nnx.to_pure_dict(g_ours), nnx.to_pure_dict(g_theirs), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gx_ours, gx_theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("cls", ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm"])
def test_flax_signatures_and_initial_state(cls):
    """Same constructor and call arguments (names, kinds, defaults), variables and initial values."""
    ours_init = inspect.signature(getattr(jx, cls).__init__).parameters
    theirs_init = inspect.signature(getattr(nnx, cls).__init__).parameters
    extras = {"virtual_batch_size", "convention"} if cls == "BatchNorm" else set()
    assert set(ours_init) - set(theirs_init) == extras
    for p in theirs_init.values():
        q = ours_init[p.name]
        assert q.kind == p.kind, p.name
        assert q.default is p.default or q.default == p.default, p.name

    def call_sig(c):
        return [(p.name, p.kind, p.default) for p in inspect.signature(c.__call__).parameters.values()]

    assert call_sig(getattr(jx, cls)) == call_sig(getattr(nnx, cls))

    args = (C, 3) if cls == "GroupNorm" else (C,)
    kw = {"scale_init": jax.nn.initializers.normal(), "param_dtype": jnp.bfloat16}
    if cls != "RMSNorm":
        kw["bias_init"] = jax.nn.initializers.uniform()
    ours, theirs = getattr(jx, cls)(*args, **kw, rngs=nnx.Rngs(7)), getattr(nnx, cls)(*args, **kw, rngs=nnx.Rngs(7))
    s_ours, s_theirs = nnx.state(ours), nnx.state(theirs)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    for (path, a), (_, b) in zip(nnx.to_flat_state(s_ours), nnx.to_flat_state(s_theirs)):
        assert type(a) is type(b), path
        np.testing.assert_array_equal(a[...], b[...])
        assert a[...].dtype == b[...].dtype
    assert ours.use_running_average is False if cls == "BatchNorm" else True


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("cls", ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm"])
@pytest.mark.parametrize("x_dtype,param_dtype,dtype", [
    (jnp.bfloat16, jnp.bfloat16, None),  # BatchNorm: float32 (the running statistics), others bfloat16
    (jnp.float32, jnp.float32, jnp.bfloat16),
])
def test_output_dtype_like_flax_nnx(cls, x_dtype, param_dtype, dtype):
    args = (C, 3) if cls == "GroupNorm" else (C,)
    kw = {"param_dtype": param_dtype, "dtype": dtype}
    x = _data(7, X).astype(x_dtype)
    ours, theirs = getattr(jx, cls)(*args, **kw, rngs=nnx.Rngs(0)), getattr(nnx, cls)(*args, **kw, rngs=nnx.Rngs(0))
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32), atol=0.1)


@pytest.mark.usefixtures("eager")
def test_custom_promote_dtype_is_applied_like_flax():
    def to_float32(args, *, dtype=None):
        return tuple(None if a is None else jnp.asarray(a, jnp.float32) for a in args)

    x = _data(8, X)
    ours = jx.LayerNorm(C, promote_dtype=to_float32, **F64, rngs=nnx.Rngs(0))
    theirs = nnx.LayerNorm(C, promote_dtype=to_float32, use_fast_variance=False, **F64, rngs=nnx.Rngs(0))
    randomize(ours)
    copy_values(ours, theirs)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype == jnp.float32
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("eager")
def test_running_stats_keep_their_dtype():
    """float32 statistics stay float32 under float64 inputs (flax.nnx's values, no dtype drift)."""
    x = _data(9, X)
    ours, theirs = jx.BatchNorm(C, rngs=nnx.Rngs(0)), nnx.BatchNorm(C, use_fast_variance=False, rngs=nnx.Rngs(0))
    ours(x)
    with pytest.warns(FutureWarning):  # flax.nnx scatters float64 into float32
        theirs(x)
    for s in ("mean", "var"):
        assert getattr(ours, s)[...].dtype == jnp.float32
        np.testing.assert_allclose(getattr(ours, s)[...], getattr(theirs, s)[...], rtol=1e-6)


# ------------------------------------------------------ train/eval switch --


class _Net(nnx.Module):
    def __init__(self, norm_name, rngs):
        self.linear = nnx.Linear(4, C, param_dtype=jnp.float64, rngs=rngs)
        self.norm = build(norm_name)

    def __call__(self, x):
        return self.norm(self.linear(x))


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("name", ["BatchNorm", "RepresentativeBatchNorm"])  # the switch lives in the base class
def test_train_eval_switch(name):
    net = _Net(name, nnx.Rngs(0))
    values = randomize(net.norm)
    x = _data(10, X[:-1] + (4,))
    assert net.norm.use_running_average is False

    net.eval()
    assert net.norm.use_running_average is True
    y_eval = net(x)
    for s in ("mean", "var"):
        np.testing.assert_array_equal(getattr(net.norm, s)[...], values[s])
    # eval output uses the running statistics: the call argument gives the same
    np.testing.assert_allclose(net.norm(net.linear(x), use_running_average=True), y_eval, **TOL)

    # the call argument takes precedence over the attribute (flax.nnx's rule)
    net.norm(net.linear(x), use_running_average=False)
    assert not np.allclose(net.norm.mean[...], values["mean"])
    net.norm.mean.set_value(values["mean"])
    net.norm.var.set_value(values["var"])

    viewed = nnx.view(net, use_running_average=False)
    assert viewed.norm.use_running_average is False and net.norm.use_running_average is True

    net.train()
    assert net.norm.use_running_average is False
    y_train = net(x)
    assert not np.allclose(y_train, y_eval)
    assert not np.allclose(net.norm.var[...], values["var"])


@pytest.mark.usefixtures("eager")
def test_use_running_average_none_everywhere_raises():
    bn = jx.BatchNorm(C, use_running_average=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="use_running_average"):
        bn(_data(0, (4, C)))
    assert bn(_data(0, (4, C)), use_running_average=True).shape == (4, C)


@pytest.mark.parametrize("name", ["BatchNorm"])
def test_jit_train_step_updates_batch_stats_and_eval_leaves_them(name):
    net = _Net(name, nnx.Rngs(0))
    values = randomize(net.norm)
    x = _data(11, X[:-1] + (4,))
    w = weights(12, X)

    @nnx.jit
    def step(net, x):
        def loss(net):
            return jnp.sum(net(x) * w)

        value, grads = nnx.value_and_grad(loss)(net)
        params = nnx.state(net, nnx.Param)
        nnx.update(net, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
        return value

    # expected statistics: the linen twin on the same features
    h = net.linear(x)
    lm, params, stats = linen_variables(name, values, h, True)
    _, updated = lm.apply({"params": params, "batch_stats": stats}, h, use_running_average=False,
                          mutable=["batch_stats"])
    scale_before = net.norm.scale[...]
    step(net, x)
    for s in ("mean", "var"):
        np.testing.assert_allclose(getattr(net.norm, s)[...], updated["batch_stats"][s], **TOL)
    assert not np.allclose(net.norm.scale[...], scale_before)

    net.eval()
    stats_before = {s: getattr(net.norm, s)[...] for s in ("mean", "var")}
    step(net, x)
    for s in ("mean", "var"):
        np.testing.assert_array_equal(getattr(net.norm, s)[...], stats_before[s])


@pytest.mark.usefixtures("eager")
def test_stats_update_carries_no_gradient():
    """The stored statistics are stop-gradient'ed (as flax.nnx does), the output is not."""
    x = _data(13, X).astype(jnp.float32)

    def new_mean(m, x):
        m(x)
        return jnp.sum(m.mean[...])

    def output(m, x):
        return jnp.sum(m(x) ** 3)

    for cls in (jx.BatchNorm, nnx.BatchNorm):
        m = cls(C, rngs=nnx.Rngs(0))
        assert new_mean(nnx.clone(m), x) != 0
        np.testing.assert_array_equal(nnx.grad(new_mean, argnums=1)(nnx.clone(m), x), 0.0)
        assert np.abs(nnx.grad(output, argnums=1)(m, x)).max() > 0


@pytest.mark.usefixtures("eager")
def test_groupnorm_reduction_axes_against_numpy():
    """GroupNorm-reduction_axes is compared with NumPy, not flax.nnx (0.12.8 repeats the
    group statistics along axis 1 there, giving wrong numbers)."""
    x = _data(14, X)
    g = np.asarray(x).reshape(X[:-1] + (2, 3))  # 2 groups of 3 channels; statistics within each group
    ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)).reshape(X)
    ours = jx.GroupNorm(C, 2, reduction_axes=(2,), **F64, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ours(x), ref, **TOL)


# ----------------------------------------------------------------- errors --


@pytest.mark.parametrize("make,match", [
    (lambda: jx.GroupNorm(7, 2, rngs=nnx.Rngs(0)), r"GroupNorm: 7 channels cannot be split into num_groups=2"),
    (lambda: jx.GroupNorm(6, None, 4, rngs=nnx.Rngs(0)), r"GroupNorm: group_size=4 does not divide"),
    (lambda: jx.GroupNorm(6, 3, 2, rngs=nnx.Rngs(0)), r"exactly one of num_groups and group_size"),
    (lambda: jx.GroupNorm(6, 0, rngs=nnx.Rngs(0)), r"num_groups=0"),
    (lambda: jx.EvoNormS0(7, 2, rngs=nnx.Rngs(0)), r"EvoNormS0: 7 channels cannot be split"),
])
def test_configuration_errors_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_axis_name_unsupported_outside_batch_family_at_construction():
    with pytest.raises(NotImplementedError, match="LayerNorm: axis_name='batch'"):
        jx.LayerNorm(C, axis_name="batch", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make,shape,exc,match", [
    (lambda: jx.BatchNorm(5, rngs=nnx.Rngs(0)), (4, C), ValueError, r"BatchNorm: num_features=5 .* 6 features"),
    (lambda: jx.LayerNorm(5, rngs=nnx.Rngs(0)), (4, C), ValueError, r"LayerNorm: num_features=5"),
    (lambda: jx.GroupNorm(5, 5, rngs=nnx.Rngs(0)), (4, C), ValueError, r"GroupNorm: num_features=5"),
    (lambda: jx.BatchNorm(C, axis=3, rngs=nnx.Rngs(0)), (4, C), ValueError, r"BatchNorm: axis=3"),
    # errors raised by the core come through unchanged
    (lambda: jx.BatchNorm(C, convention="torch", rngs=nnx.Rngs(0)), (1, C), ValueError, r"batch_norm"),
    (lambda: jx.LocalResponseNorm(0), (4, C), ValueError, r"local_response_norm"),
])
def test_errors_at_first_call(make, shape, exc, match):
    m = make()
    with pytest.raises(exc, match=match):
        m(jnp.ones(shape))
    with pytest.raises(exc, match=match):
        nnx.jit(lambda m, x: m(x))(m, jnp.ones(shape))
