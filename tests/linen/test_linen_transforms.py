"""Every jaxnorm.linen module under Flax's lifted transformations, against the plain module.

For each of the 15 modules, in float64 with perturbed (non-trivial) parameters:

* ``jax.jit`` of ``apply`` equals the eager call (outputs and updated state);
* ``nn.scan`` over a two-layer stack of ``nn.remat`` blocks (``h + norm(h)``)
  equals the unrolled loop over the same layers without remat: outputs,
  gradients with respect to every parameter and the input, and each
  layer's updated ``batch_stats`` in training;
* per example: ``nn.vmap`` with shared variables equals the whole batch;
  for the batch family this needs ``axis_name`` (and ``batch_axis=None``
  where the scheme also has per-example statistics), both through
  ``nn.vmap`` and through ``jax.vmap`` of ``apply``, in training (output and
  new running statistics) and in eval mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import jaxnorm.linen as jl

C = 6
X = np.random.default_rng(0).standard_normal((4, 3, C)) * 1.5 + 0.7
F64 = {"param_dtype": jnp.float64}
TOL = {"rtol": 1e-10, "atol": 1e-11}

BATCH = ["BatchNorm", "BatchRenorm", "RepresentativeBatchNorm", "EvoNormB0", "SwitchableNorm"]
PER_EXAMPLE = ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "FilterResponseNorm", "EvoNormS0",
               "LocalResponseNorm"]
WEIGHTS = ["WeightNorm", "SpectralNorm", "StandardizedConv"]
ALL = BATCH + PER_EXAMPLE + WEIGHTS
# Schemes whose training statistics mix per-example and batch sources: under
# vmap the example has no batch axis of its own.
PER_EXAMPLE_STATS = {"RepresentativeBatchNorm", "EvoNormB0", "SwitchableNorm"}


def make(name, train, **extra):
    """``(module, call kwargs)``: ``name`` built in float64, in training mode if ``train``."""
    if name in BATCH:
        kwargs = {"r_max": 1.5, "d_max": 0.5} if name == "BatchRenorm" else {}
        return getattr(jl, name)(use_running_average=not train, momentum=0.8, **kwargs, **extra, **F64), {}
    if name == "GroupNorm":
        # Explicit axes: by default axis 0 is the batch (flax.linen's rule), also inside vmap.
        return jl.GroupNorm(num_groups=3, reduction_axes=(-2, -1), **F64), {}
    if name == "EvoNormS0":
        return jl.EvoNormS0(num_groups=2, **F64), {}
    if name == "LocalResponseNorm":
        return jl.LocalResponseNorm(size=3, alpha=0.5, k=1.5), {}
    if name == "WeightNorm":
        return jl.WeightNorm(nn.Dense(C, **F64), **F64), {}
    if name == "SpectralNorm":
        return jl.SpectralNorm(nn.Dense(C, **F64), n_steps=2, **F64), {"update_stats": train}
    if name == "StandardizedConv":
        return jl.StandardizedConv(C, (3,), **F64), {}
    return getattr(jl, name)(**F64), {}


class Applied(nn.Module):
    """The module ``name`` applied once (its own call kwargs fixed)."""

    scheme: str
    train: bool

    @nn.compact
    def __call__(self, x):
        module, kwargs = make(self.scheme, self.train)
        return module(x, **kwargs)


class Block(nn.Module):
    """A residual block ``h + norm(h)``, in the ``(carry, x) -> (carry, y)`` form of nn.scan."""

    scheme: str
    train: bool

    @nn.compact
    def __call__(self, h, _):
        return h + Applied(self.scheme, self.train)(h), None


def perturbed(variables, seed=1):
    """The variables with every parameter moved off its (often 1/0) initial value."""
    leaves, tree = jax.tree.flatten(variables.get("params", {}))
    rng = np.random.default_rng(seed)
    params = tree.unflatten([p + 0.3 * rng.standard_normal(p.shape) for p in leaves])
    return {**variables, "params": params} if leaves else variables


def assert_trees_close(a, b):
    """Leaf by leaf: float64 to 1e-10; float32 leaves (running statistics) to float32 rounding.

    A float32 running statistic is a float64 batch statistic rounded once;
    two float64 values that differ in their last bits may round to adjacent
    float32 values, so bitwise equality would test XLA's fusion order.
    """
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        tol = TOL if np.asarray(u).dtype == np.float64 else {"rtol": 3e-7, "atol": 1e-7}
        np.testing.assert_allclose(u, v, **tol)


def is_training_mode(name):
    return name in BATCH or name == "SpectralNorm"


@pytest.mark.parametrize("name", ALL)
def test_jit_equals_eager(name):
    train = is_training_mode(name)
    module = Applied(name, train)
    variables = perturbed(module.init(jax.random.key(0), X))
    apply = functools.partial(module.apply, mutable=["batch_stats"])
    with jax.disable_jit():
        y_eager, state_eager = apply(variables, X)
    y_jit, state_jit = jax.jit(apply)(variables, X)
    np.testing.assert_allclose(y_jit, y_eager, **TOL)
    assert_trees_close(state_jit, state_eager)
    if train:  # the state moved
        before = jax.tree.leaves(variables["batch_stats"])
        assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state_jit), before))


@pytest.mark.parametrize("name", ALL)
def test_scan_of_remat_blocks_equals_unrolled_loop(name):
    layers, train = 2, is_training_mode(name)
    scanned = nn.scan(
        nn.remat(Block), variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True}, length=layers,
    )(name, train)
    variables = perturbed(scanned.init(jax.random.key(0), X, None))
    weights = np.random.default_rng(2).standard_normal(X.shape)

    def loss_scanned(params, x):
        (y, _), state = scanned.apply({**variables, "params": params}, x, None, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * weights), state

    def loss_unrolled(params, x):
        h, states = x, []
        for i in range(layers):
            layer = jax.tree.map(lambda t, i=i: t[i], {**variables, "params": params})
            (h, _), state = Block(name, train).apply(layer, h, None, mutable=["batch_stats"])
            states.append(state)
        stacked = jax.tree.map(lambda *t: jnp.stack(t), *states) if states[0] else {}
        return jnp.sum(jnp.sin(h) * weights), stacked

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
    (value_s, state_s), grads_s = jax.jit(grad(loss_scanned))(variables.get("params", {}), X)
    (value_u, state_u), grads_u = jax.jit(grad(loss_unrolled))(variables.get("params", {}), X)
    np.testing.assert_allclose(value_s, value_u, **TOL)
    assert_trees_close(grads_s, grads_u)
    assert_trees_close(state_s, state_u)
    assert np.any(grads_s[1] != 0)
    assert all(np.any(g != 0) for g in jax.tree.leaves(grads_s[0]))
    if train:  # the two layers saw different inputs, so their new statistics differ
        for leaf in jax.tree.leaves(state_s):
            assert not np.allclose(leaf[0], leaf[1])


@pytest.mark.parametrize("name", ALL)
def test_nn_vmap_over_ensemble_members_equals_loop(name):
    """nn.vmap over a leading member axis, each member with its own variables."""
    members, train = 2, is_training_mode(name)
    xs = np.stack([X, X[::-1] * 0.5 - 1.0])
    ensemble = nn.vmap(
        Applied, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True}, in_axes=0,
    )(name, train)
    variables = perturbed(ensemble.init(jax.random.key(0), xs))
    y, state = jax.jit(functools.partial(ensemble.apply, mutable=["batch_stats"]))(variables, xs)
    for m in range(members):
        member = jax.tree.map(lambda t, m=m: t[m], variables)
        y_m, state_m = Applied(name, train).apply(member, xs[m], mutable=["batch_stats"])
        np.testing.assert_allclose(y[m], y_m, **TOL)
        assert_trees_close(jax.tree.map(lambda t, m=m: t[m], state), state_m)
    if variables.get("params"):  # the members' parameters differ
        assert not np.allclose(*(jax.tree.leaves(variables["params"])[0][:2]))


# Not the schemes that, like flax.linen's InstanceNorm, take axis 0 as the batch
# axis (also inside vmap, so one example of shape (L, C) would be normalized per
# position): InstanceNorm, FilterResponseNorm, EvoNormS0.
@pytest.mark.parametrize("name", [n for n in PER_EXAMPLE + WEIGHTS
                                  if n not in ("InstanceNorm", "FilterResponseNorm", "EvoNormS0")])
def test_nn_vmap_over_examples_equals_whole_batch(name):
    train = is_training_mode(name)

    class PerExample(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmapped = nn.vmap(
                Applied, variable_axes={"params": None, "batch_stats": None},
                split_rngs={"params": False}, in_axes=0,
            )
            return vmapped(name, train)(x)

    whole = Applied(name, train)
    variables = perturbed(whole.init(jax.random.key(0), X))
    y_w, state_w = whole.apply(variables, X, mutable=["batch_stats"])
    per = PerExample()
    init = per.init(jax.random.key(0), X)
    # The same variables, one level down under the vmapped module's name.
    outer = {name for collection in init.values() for name in collection}
    nested = {col: {o: tree for o in outer} for col, tree in variables.items()}
    assert jax.tree.structure(nested) == jax.tree.structure(init)
    y_p, state_p = per.apply(nested, X, mutable=["batch_stats"])
    np.testing.assert_allclose(y_p, y_w, **TOL)
    if state_w:
        assert_trees_close(state_p, {col: {o: tree for o in outer} for col, tree in state_w.items()})


@pytest.mark.parametrize("name", BATCH)
def test_jax_vmap_of_apply_with_axis_name_equals_whole_batch(name):
    extra = {"axis_name": "examples"}
    if name in PER_EXAMPLE_STATS:
        extra["batch_axis"] = None
    variables = perturbed(make(name, True)[0].init(jax.random.key(0), X))
    for train in (True, False):
        want, state_w = make(name, train)[0].apply(variables, X, mutable=["batch_stats"])
        per = make(name, train, **extra)[0]
        got, state_p = jax.vmap(lambda xi, per=per: per.apply(variables, xi, mutable=["batch_stats"]),
                                axis_name="examples")(X)
        np.testing.assert_allclose(got, want, **TOL)
        for a, b in zip(jax.tree.leaves(state_p), jax.tree.leaves(state_w)):
            np.testing.assert_allclose(a, np.broadcast_to(b, a.shape), **TOL)  # one copy per example
