"""jaxnorm.linen: drop-in equality with flax.linen, variables, transformations, errors.

The drop-in test swaps flax.linen's norm for ours in a small ResNet-style
model (conv, norm, relu, residual) and compares init variables, outputs,
gradients and updated ``batch_stats`` with flax.linen's modules run with
``use_fast_variance=False`` (its exact two-pass statistics), in float64.
The other modules are checked against the core function they wrap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxnorm import linen as jnl
import jaxnorm as jn

F64 = {"param_dtype": jnp.float64}
TOL = {"rtol": 1e-10, "atol": 1e-10}
X = np.random.default_rng(0).standard_normal((4, 6, 6, 3)) * 2 + 1


def _norm(lib, kind, train, flax_args):
    extra = {"use_fast_variance": False} if flax_args else {}
    if kind == "BatchNorm":
        return lib.BatchNorm(use_running_average=not train, **F64, **extra)
    if kind == "GroupNorm":
        return lib.GroupNorm(num_groups=4, **F64, **extra)
    if kind == "GroupNormSize":
        return lib.GroupNorm(num_groups=None, group_size=2, **F64, **extra)
    if kind == "LayerNormSpatial":
        return lib.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, **F64, **extra)
    return getattr(lib, kind)(**F64, **extra)


class ResNetish(nn.Module):
    lib: object
    kind: str
    flax_args: bool

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, 8, (3, 3), param_dtype=jnp.float64)
        h = nn.relu(_norm(self.lib, self.kind, train, self.flax_args)(conv()(x)))
        h2 = _norm(self.lib, self.kind, train, self.flax_args)(conv()(h))
        return nn.relu(h + h2).mean((1, 2))


KINDS = ["BatchNorm", "LayerNorm", "LayerNormSpatial", "RMSNorm", "GroupNorm", "GroupNormSize", "InstanceNorm"]


@pytest.mark.parametrize("kind", KINDS)
def test_drop_in_resnet_matches_flax(kind):
    ours, theirs = ResNetish(jnl, kind, False), ResNetish(nn, kind, True)
    v_theirs = theirs.init(jax.random.key(1), X, True)
    v_ours = ours.init(jax.random.key(1), X, True)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs)):
        np.testing.assert_array_equal(a, b)
    # Perturb the parameters so scale/bias are not the trivial 1/0.
    leaves, tree = jax.tree.flatten(v_theirs["params"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = tree.unflatten([p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    variables = {**v_theirs, "params": params}
    # Running statistics in float64 too: flax.linen adds ε to them in their
    # own dtype in inference, which would round at float32.
    variables = jax.tree.map(lambda t: t.astype(jnp.float64), variables)

    def loss(params, model, train):
        out = model.apply({**variables, "params": params}, X, train, mutable=["batch_stats"])
        y, updates = out
        return jnp.sum(jnp.sin(y)), (y, updates)

    for train in (True, False):
        (_, (y_t, u_t)), g_t = jax.value_and_grad(loss, has_aux=True)(params, theirs, train)
        (_, (y_o, u_o)), g_o = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(1, 2))(params, ours, train)
        np.testing.assert_allclose(y_o, y_t, **TOL)
        for a, b in zip(jax.tree.leaves(g_o), jax.tree.leaves(g_t)):
            np.testing.assert_allclose(a, b, **TOL)
        for a, b in zip(jax.tree.leaves(u_o), jax.tree.leaves(u_t)):
            np.testing.assert_allclose(a, b, **TOL)
        if kind == "BatchNorm":
            moved = not np.allclose(u_o["batch_stats"]["BatchNorm_0"]["mean"], 0)
            assert moved == train


def test_batch_norm_init_updates_nothing_and_training_flag_from_either_place():
    module = jnl.BatchNorm(**F64)
    variables = module.init(jax.random.key(0), X, use_running_average=False)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(3))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(3))
    y1, upd = module.apply(variables, X, use_running_average=False, mutable=["batch_stats"])
    y2, upd2 = jnl.BatchNorm(use_running_average=False, **F64).apply(variables, X, mutable=["batch_stats"])
    np.testing.assert_array_equal(y1, y2)
    # float64 statistics: in training the module's float32 ones are promoted to the float64 batch's, as flax.linen's
    ref_y, ref_stats = jn.batch_norm(X, np.ones(3), np.zeros(3), jn.BatchStats.init(3, jnp.float64), training=True)
    np.testing.assert_allclose(y1, ref_y, **TOL)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], ref_stats.mean, **TOL)
    with pytest.raises(ValueError, match="use_running_average"):
        jnl.BatchNorm(use_running_average=True).apply(variables, X, use_running_average=False)
    with pytest.raises(ValueError, match="use_running_average"):
        jnl.BatchNorm().apply(variables, X)


def test_batch_norm_under_nn_vmap_with_axis_name_equals_whole_batch():
    class PerExample(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmapped = nn.vmap(
                jnl.BatchNorm, variable_axes={"params": None, "batch_stats": None},
                split_rngs={"params": False}, in_axes=0, axis_name="batch",
            )
            return vmapped(use_running_average=False, axis_name="batch", **F64)(x)

    whole = jnl.BatchNorm(use_running_average=False, **F64)
    v = whole.init(jax.random.key(0), X)
    y_w, u_w = whole.apply(v, X, mutable=["batch_stats"])
    per = PerExample()
    v_p = per.init(jax.random.key(0), X)
    y_p, u_p = per.apply(v_p, X, mutable=["batch_stats"])
    np.testing.assert_allclose(y_p, y_w, **TOL)
    np.testing.assert_allclose(jax.tree.leaves(u_p)[0], jax.tree.leaves(u_w)[0], **TOL)


def test_scan_and_remat_match_unrolled():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            h = h + nn.Dense(3, param_dtype=jnp.float64)(jnl.LayerNorm(**F64)(h))
            return h, None

    scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()
    x = X.reshape(-1, 3)
    v = scanned.init(jax.random.key(0), x, None)
    y_scan = scanned.apply(v, x, None)[0]
    h = x
    for i in range(3):
        layer = jax.tree.map(lambda t, i=i: t[i], v["params"])
        h = Block().apply({"params": layer}, h, None)[0]
    np.testing.assert_allclose(y_scan, h, **TOL)

    remat_bn = nn.remat(jnl.BatchNorm)(use_running_average=False, **F64)
    plain = jnl.BatchNorm(use_running_average=False, **F64)
    v = plain.init(jax.random.key(0), X)
    grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply({**v, "params": p}, X, mutable=["batch_stats"])[0] ** 3))(v["params"])  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(remat_bn)), jax.tree.leaves(grad(plain))):
        np.testing.assert_allclose(a, b, **TOL)


def _core_check(module, core, x=X, train=True, extra_names=()):
    """Module output (and new stats) equal the core call on the module's variables."""
    kwargs = {} if train is None else {"use_running_average": not train}
    v = module.init(jax.random.key(0), x, **kwargs)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda p: p + 0.2 * rng.standard_normal(p.shape), v["params"])
    variables = {**v, "params": params}
    y, upd = module.apply(variables, x, **kwargs, mutable=["batch_stats"])
    want = core(params, variables.get("batch_stats"))
    if isinstance(want, tuple):
        want, new = want
        if train:
            np.testing.assert_allclose(upd["batch_stats"]["mean"], new.mean, **TOL)
            np.testing.assert_allclose(upd["batch_stats"]["var"], new.var, **TOL)
        else:
            for name in ("mean", "var"):
                np.testing.assert_array_equal(upd["batch_stats"][name], variables["batch_stats"][name])
    np.testing.assert_allclose(y, want, **TOL)
    assert set(params) == {"scale", "bias", *extra_names}


@pytest.mark.parametrize("train", [True, False])
def test_batch_family_modules_call_their_core(train):
    def stats(s):  # promoted to the float64 batch's dtype, as the modules (and flax.linen) do in training
        return jn.BatchStats(jnp.asarray(s["mean"], jnp.float64), jnp.asarray(s["var"], jnp.float64))

    _core_check(
        jnl.BatchRenorm(r_max=2.0, d_max=1.0, **F64),
        lambda p, s: jn.batch_renorm(X, p["scale"], p["bias"], stats(s), training=train, r_max=2.0, d_max=1.0),
        train=train,
    )
    _core_check(
        jnl.RepresentativeBatchNorm(**F64),
        lambda p, s: jn.representative_batch_norm(
            X, p["scale"], p["bias"], stats(s), training=train, center_weight=p["center_weight"],
            scale_weight=p["scale_weight"], scale_bias=p["scale_bias"]),
        train=train, extra_names=("center_weight", "scale_weight", "scale_bias"),
    )
    _core_check(
        jnl.EvoNormB0(**F64),
        lambda p, s: jn.evonorm_b0(X, p["scale"], p["bias"], p["v"], stats(s), training=train),
        train=train, extra_names=("v",),
    )
    _core_check(
        jnl.SwitchableNorm(momentum=0.9, **F64),
        lambda p, s: jn.switchable_norm(
            X, p["scale"], p["bias"], stats(s), training=train, momentum=0.9,
            mean_logits=p["mean_logits"], var_logits=p["var_logits"]),
        train=train, extra_names=("mean_logits", "var_logits"),
    )
    _core_check(
        jnl.BatchNorm(virtual_batch_size=2, convention="torch", momentum=0.2, **F64),
        lambda p, s: jn.batch_norm(X, p["scale"], p["bias"], stats(s), training=train, momentum=0.2,
                                   virtual_batch_size=2, convention="torch"),
        train=train,
    )


def test_per_example_modules_call_their_core():
    _core_check(jnl.FilterResponseNorm(**F64), lambda p, s: jn.filter_response_norm(X, p["scale"], p["bias"], p["tau"]),
                train=None, extra_names=("tau",))
    _core_check(jnl.EvoNormS0(num_groups=3, **F64), lambda p, s: jn.evonorm_s0(X, p["scale"], p["bias"], p["v"], num_groups=3),
                train=None, extra_names=("v",))
    y = jnl.LocalResponseNorm(size=3, alpha=0.5).apply({}, X)
    np.testing.assert_allclose(y, jn.local_response_norm(X, size=3, alpha=0.5), **TOL)


def test_output_dtype_follows_flax():
    x = jnp.asarray(X, jnp.bfloat16)
    for module, flax_module in [(jnl.LayerNorm(), nn.LayerNorm()), (jnl.GroupNorm(num_groups=3), nn.GroupNorm(num_groups=3))]:
        v = flax_module.init(jax.random.key(0), x)
        assert module.apply(v, x).dtype == flax_module.apply(v, x).dtype == jnp.float32
        assert jnl.LayerNorm(dtype=jnp.bfloat16).apply(v, x).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (jnl.GroupNorm(num_groups=2), ValueError, "3 channels cannot be split into num_groups=2"),
        (jnl.GroupNorm(num_groups=3, group_size=1), ValueError, "exactly one of num_groups and group_size"),
        (jnl.GroupNorm(num_groups=None, group_size=2), ValueError, "group_size=2 does not divide the 3"),
        (jnl.GroupNorm(num_groups=None), ValueError, "exactly one of num_groups and group_size"),
        (jnl.BatchNorm(use_running_average=False, axis=4), ValueError, "axis=4 is not an axis"),
        (jnl.BatchNorm(use_running_average=False, axis=(1, 5)), ValueError, r"axis=\(1, 5\) names 5"),
        (jnl.InstanceNorm(feature_axes=7), ValueError, "feature_axes=7"),
        (jnl.LayerNorm(axis_name="d"), NotImplementedError, "axis_name='d'"),
        (jnl.EvoNormS0(num_groups=2), ValueError, "evonorm_s0: 3 channels cannot be split"),
    ],
)
def test_bad_constructor_arguments_fail_at_init(module, error, match):
    with pytest.raises(error, match=match):
        module.init(jax.random.key(0), X)


@pytest.mark.parametrize("cls", [jnl.RepresentativeBatchNorm, jnl.EvoNormB0, jnl.SwitchableNorm, jnl.BatchRenorm])
def test_batch_family_per_example_under_nn_vmap_equals_whole_batch(cls):
    """With axis_name (and batch_axis=None where the scheme has per-example statistics)."""
    per_example_kw = {} if cls is jnl.BatchRenorm else {"batch_axis": None}

    class PerExample(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmapped = nn.vmap(
                cls, variable_axes={"params": None, "batch_stats": None},
                split_rngs={"params": False}, in_axes=0, axis_name="batch",
            )
            return vmapped(use_running_average=False, axis_name="batch", **per_example_kw, **F64)(x)

    whole = cls(use_running_average=False, **F64)
    v = whole.init(jax.random.key(0), X)
    params = jax.tree.map(lambda p: p + 0.3, v["params"])
    y_w, u_w = whole.apply({**v, "params": params}, X, mutable=["batch_stats"])
    per = PerExample()
    v_p = per.init(jax.random.key(0), X)
    # Both start from the same deterministic initial values (ones/zeros).
    params_p = jax.tree.map(lambda p: p + 0.3, v_p["params"])
    assert jax.tree.leaves(params_p) and len(jax.tree.leaves(params_p)) == len(jax.tree.leaves(params))
    y_p, u_p = per.apply({**v_p, "params": params_p}, X, mutable=["batch_stats"])
    np.testing.assert_allclose(y_p, y_w, **TOL)
    for a, b in zip(jax.tree.leaves(u_p), jax.tree.leaves(u_w)):
        np.testing.assert_allclose(a, b, **TOL)
