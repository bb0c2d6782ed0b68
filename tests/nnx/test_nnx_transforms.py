"""jaxnorm.nnx under Flax NNX transformations: the same numbers as without them.

Every module of :mod:`jaxnorm.nnx` holds random, non-trivial float64 values
(scales of either sign away from 1, biases and extra parameters away from 0,
positive running variances), and every check compares numbers with tight
tolerances:

* ``nnx.vmap`` with ``axis_name`` for the BatchNorm family (BatchNorm,
  BatchRenorm, RepresentativeBatchNorm, EvoNormB0, SwitchableNorm; the last
  three with ``batch_axis=None``): the module state broadcast
  (``in_axes=(None, 0)``), one example per vmap lane, equals the same
  module applied to the whole batch: outputs and the running statistics it
  writes back in training, outputs and untouched statistics in eval; in
  NNX graph mode (plain ``None`` and ``nnx.StateAxes``) and tree mode
  (``graph=False``). A control shows that without ``axis_name`` the
  batched update cannot be written back (flax raises).
* ``nnx.vmap`` over the examples for the per-example and weight modules
  (state broadcast) equals the whole-batch call, SpectralNorm's ``u`` and
  ``sigma`` updates included; graph and tree mode.
* ``nnx.scan`` over a stack of two layers created with ``nnx.vmap`` over
  split rngs (block ``h + layer(h)``) equals the unrolled loop over the
  layers merged from slices of the stacked state: outputs and each layer's
  updated state (running statistics, ``u``/``sigma``).
* ``nnx.grad`` through ``nnx.remat`` equals ``nnx.grad`` without it:
  parameter and input gradients, and the state updated by the training call.
* ``nnx.jit`` of the call equals the eager call (``jax.disable_jit()``):
  outputs and the updated state, in each mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.nnx as jx

C, L = 6, 2  # channels, layers in the scanned stack
X = (4, 3, C)  # one input shape everywhere: (batch, spatial, channels)
TOL = {"rtol": 1e-10, "atol": 1e-11}
F64 = {"param_dtype": jnp.float64}


def _linear(rngs):
    return nnx.Linear(C, C, **F64, rngs=rngs)


# name -> factory(rngs, **kwargs). kwargs only for the BatchNorm family (axis_name, batch_axis).
BATCH = {
    "BatchNorm": lambda rngs, **k: jx.BatchNorm(C, momentum=0.9, **F64, rngs=rngs, **k),
    "BatchRenorm": lambda rngs, **k: jx.BatchRenorm(C, r_max=1.2, d_max=0.3, **F64, rngs=rngs, **k),
    "RepresentativeBatchNorm": lambda rngs, **k: jx.RepresentativeBatchNorm(C, **F64, rngs=rngs, **k),
    "EvoNormB0": lambda rngs, **k: jx.EvoNormB0(C, momentum=0.8, **F64, rngs=rngs, **k),
    "SwitchableNorm": lambda rngs, **k: jx.SwitchableNorm(C, **F64, rngs=rngs, **k),
}
HAS_BATCH_AXIS = {"RepresentativeBatchNorm", "EvoNormB0", "SwitchableNorm"}  # take batch_axis=None
PER_EXAMPLE = {
    "LayerNorm": lambda rngs: jx.LayerNorm(C, **F64, rngs=rngs),
    "RMSNorm": lambda rngs: jx.RMSNorm(C, **F64, rngs=rngs),
    "GroupNorm": lambda rngs: jx.GroupNorm(C, 3, **F64, rngs=rngs),
    "InstanceNorm": lambda rngs: jx.InstanceNorm(C, **F64, rngs=rngs),
    "FilterResponseNorm": lambda rngs: jx.FilterResponseNorm(C, **F64, rngs=rngs),
    "EvoNormS0": lambda rngs: jx.EvoNormS0(C, 3, **F64, rngs=rngs),
    "LocalResponseNorm": lambda rngs: jx.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5),
}
# These treat axis 0 as the batch (never reduced over): one example is vmapped as a batch of one.
LEADING_BATCH_AXIS = {"GroupNorm", "InstanceNorm", "FilterResponseNorm", "EvoNormS0"}
WEIGHTS = {
    "WeightNorm": lambda rngs: jx.WeightNorm(_linear(rngs), **F64, rngs=rngs),
    "SpectralNorm": lambda rngs: jx.SpectralNorm(_linear(rngs), n_steps=2, **F64, rngs=rngs),
    "StandardizedConv": lambda rngs: jx.StandardizedConv(C, C, (3,), **F64, rngs=rngs),
}
FACTORIES = {**BATCH, **PER_EXAMPLE, **WEIGHTS}
ALL = list(FACTORIES)


def build(name, rngs=None, **kwargs):
    return FACTORIES[name](nnx.Rngs(0) if rngs is None else rngs, **kwargs)


def modes(name):
    """Call keyword arguments: training first (state updated), then eval, where the module has both."""
    if name in BATCH:
        return [{"use_running_average": False}, {"use_running_average": True}]
    if name == "SpectralNorm":
        return [{"update_stats": True}, {"update_stats": False}]
    return [{}]


def updates_state(kw):
    return kw.get("use_running_average") is False or kw.get("update_stats") is True


def _data(seed, shape=X):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1.5, 1.5) + rng.uniform(0.5, 2.0) * rng.standard_normal(shape))


def randomize(module, seed=0):
    """Random non-trivial float64 values in every variable (stacked ones too)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module)
    for path, var in nnx.to_flat_state(state):
        names = _names(path)
        shape = var[...].shape
        if names & {"scale", "scale_bias", "scales"}:
            v = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape)
        elif names & {"var", "sigma"}:
            v = rng.uniform(0.5, 2.0, shape)
        else:
            v = 0.7 * rng.standard_normal(shape)
        var.set_value(jnp.asarray(v, jnp.float64))
    nnx.update(module, state)


def arrays(module):
    """``{path: np.ndarray}`` of every variable of a module."""
    return {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(module))}


def assert_close(a, b, **tol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or TOL))


def assert_arrays_close(a, b, **tol):
    assert set(a) == set(b), (set(a), set(b))
    for path in a:
        assert a[path].shape == b[path].shape, path
        np.testing.assert_allclose(a[path], b[path], err_msg=str(path), **(tol or TOL))


def _names(path):
    """The string keys of a state path, nested tuples (WeightNorm/SpectralNorm dict keys) flattened."""
    out = set()
    for p in path:
        out |= _names(p) if isinstance(p, tuple) else {p} if isinstance(p, str) else set()
    return out


def assert_state_moved(before, after, kw):
    """In training the running statistics / u / sigma moved; otherwise every variable is untouched."""
    moved = [p for p in before if not np.array_equal(before[p], after[p])]
    if updates_state(kw):
        expected = {p for p in before if _names(p) & {"mean", "var", "u", "sigma"}}
        assert set(moved) == expected and expected, (moved, expected)
    else:
        assert moved == [], moved


def not_identity(y, x):
    assert np.abs(np.asarray(y) - np.asarray(x)).max() > 1e-3


# ------------------------------------------- nnx.vmap with axis_name: BatchNorm family --


@pytest.mark.parametrize("name", list(BATCH))
def test_vmap_axis_name_batch_family(name):
    """Per-example calls in ``nnx.vmap(axis_name='batch')`` equal the whole-batch call.

    The module is broadcast (``in_axes=None``); the running statistics the
    training call writes inside vmap are the same on every lane (they come
    from collectives over the axis), so NNX writes them back to the module.
    """
    ref = build(name)
    randomize(ref, seed=len(name))
    initial = arrays(ref)
    x = _data(1)
    kwargs = {"axis_name": "batch", **({"batch_axis": None} if name in HAS_BATCH_AXIS else {})}
    # graph mode, tree mode, and graph mode with the explicit StateAxes spelling of the broadcast
    spellings = [(True, None), (False, None), (True, nnx.StateAxes({nnx.Param: None, nnx.BatchStat: None}))]
    for graph, module_axes in spellings:
        for kw in modes(name):
            whole = nnx.clone(ref)
            lanes = build(name, **kwargs)
            nnx.update(lanes, nnx.state(nnx.clone(ref)))
            assert lanes.axis_name == "batch"

            f = nnx.vmap(lambda m, x: m(x, **kw), in_axes=(module_axes, 0), axis_name="batch", graph=graph)
            with jax.disable_jit():
                y = f(lanes, x)
                y_whole = whole(x, **kw)
            assert y.shape == X
            assert_close(y, y_whole)
            not_identity(y, x)
            assert_arrays_close(arrays(lanes), arrays(whole))
            assert_state_moved(initial, arrays(lanes), kw)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])
def test_vmap_batch_family_without_axis_name_cannot_write_back(graph):
    """Control for the test above: without ``axis_name`` each lane computes its own
    statistics, so the update is batched and cannot be written to a broadcast module."""
    m = build("BatchNorm")
    randomize(m)
    before = arrays(m)
    with jax.disable_jit(), pytest.raises(ValueError, match="got axis spec None but output was batched"):
        nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=graph)(m, _data(1))
    assert_arrays_close(arrays(m), before, rtol=0, atol=0)


# ------------------------------------- nnx.vmap over examples: per-example and weights --


@pytest.mark.parametrize("name", list(PER_EXAMPLE) + list(WEIGHTS))
def test_vmap_over_examples(name):
    ref = build(name)
    randomize(ref, seed=len(name))
    initial = arrays(ref)
    x = _data(2)
    xs = x[:, None] if name in LEADING_BATCH_AXIS else x  # (4, 1, 3, C): one example as a batch of one
    for graph in (True, False):
        for kw in modes(name):
            lanes, whole = nnx.clone(ref), nnx.clone(ref)
            f = nnx.vmap(lambda m, x: m(x, **kw), in_axes=(None, 0), graph=graph)
            with jax.disable_jit():
                y = f(lanes, xs)
                y_whole = whole(x, **kw)
            assert y.shape == xs.shape
            assert_close(y.reshape(X), y_whole)
            not_identity(y_whole, x)
            assert_arrays_close(arrays(lanes), arrays(whole))
            assert_state_moved(initial, arrays(lanes), kw)


# ------------------------------------------------------- nnx.scan over a layer stack --


def make_stack(name):
    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=0, out_axes=0)
    def create(rngs):
        return build(name, rngs)

    return create(nnx.Rngs(0))


@pytest.mark.parametrize("name", ALL)
def test_scan_over_layers(name):
    stack = make_stack(name)
    randomize(stack, seed=len(name))
    graphdef, state = nnx.split(stack)
    for path, a in arrays(stack).items():
        assert a.shape[0] == L, path
        assert not np.array_equal(a[0], a[1]), path  # the layers differ
    initial = arrays(stack)
    x = _data(3)
    for kw in modes(name):
        scanned = nnx.clone(stack)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, length=L)
        def forward(h, layer):
            return h + layer(h, **kw)

        y = forward(x, scanned)

        # the unrolled loop over the layers merged from slices of the stacked state
        h, layers = x, []
        with jax.disable_jit():
            for i in range(L):
                layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
                h = h + layer(h, **kw)
                layers.append(arrays(layer))
        assert_close(y, h)
        not_identity(y - x, x)
        after = arrays(scanned)
        for i in range(L):
            assert_arrays_close({p: a[i] for p, a in after.items()}, layers[i])
        assert_state_moved(initial, after, kw)


# ------------------------------------------------------------------------ nnx.remat --


@pytest.mark.parametrize("name", ALL)
def test_remat_grad(name):
    kw = modes(name)[0]  # training, where there is a mode
    ref = build(name)
    randomize(ref, seed=len(name))
    initial = arrays(ref)
    x, w = _data(4), _data(5)

    def loss(call):
        return lambda m, x: jnp.sum(jnp.sin(call(m, x)) * w)

    plain, rematted = nnx.clone(ref), nnx.clone(ref)
    with jax.disable_jit():
        g, gx = nnx.grad(loss(lambda m, x: m(x, **kw)), argnums=(0, 1))(plain, x)
        g_r, gx_r = nnx.grad(loss(nnx.remat(lambda m, x: m(x, **kw))), argnums=(0, 1))(rematted, x)
    g, g_r = arrays(g), arrays(g_r)
    assert_arrays_close(g_r, g)
    assert_close(gx_r, gx)
    assert g or name == "LocalResponseNorm"
    assert all(np.abs(a).max() > 1e-6 for a in g.values())
    assert np.abs(np.asarray(gx)).max() > 1e-6
    assert_arrays_close(arrays(rematted), arrays(plain))
    assert_state_moved(initial, arrays(rematted), kw)


# -------------------------------------------------------------------------- nnx.jit --


@pytest.mark.parametrize("name", ALL)
def test_jit_matches_eager(name):
    ref = build(name)
    randomize(ref, seed=len(name))
    initial = arrays(ref)
    x = _data(6)
    for kw in modes(name):
        jitted, eager = nnx.clone(ref), nnx.clone(ref)
        y = nnx.jit(lambda m, x: m(x, **kw))(jitted, x)
        with jax.disable_jit():
            y_eager = eager(x, **kw)
        assert_close(y, y_eager)
        not_identity(y, x)
        assert_arrays_close(arrays(jitted), arrays(eager))
        assert_state_moved(initial, arrays(jitted), kw)
