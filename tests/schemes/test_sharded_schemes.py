"""The schemes of issue 4 on sharded arrays: jit with explicit shardings, shard_map.

Activation schemes get a batch sharded over the 8 simulated CPU devices of
``conftest.py``; weight schemes a kernel sharded along its output features or
its input features (as in tensor- or fully-sharded data parallelism). Each
result, and the gradient of a scalar loss, must equal the unsharded call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm as jn

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 devices of tests/conftest.py")

C = 16
RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 3, 4, C))
KERNEL = RNG.standard_normal((3, 3, 8, C))
U = RNG.standard_normal(C)
STATS = jn.BatchStats(RNG.standard_normal(C), 1 + RNG.random(C))
PARAMS = [RNG.standard_normal(C) for _ in range(3)]

ACTIVATION = {
    "local_response_norm": lambda x: jn.local_response_norm(x, size=3, alpha=0.5),
    "filter_response_norm": lambda x: jn.filter_response_norm(x, *PARAMS),
    "evonorm_s0": lambda x: jn.evonorm_s0(x, *PARAMS, num_groups=4),
    "evonorm_b0": lambda x: jn.evonorm_b0(x, *PARAMS, STATS, training=True),
    "switchable_norm": lambda x: jn.switchable_norm(
        x, PARAMS[0], PARAMS[1], STATS, training=True, mean_logits=jnp.array([0.3, -0.2, 0.1])
    ),
}
WEIGHT = {
    "weight_norm": lambda w: jn.weight_norm(w, PARAMS[0]),
    "spectral_norm": lambda w: jn.spectral_norm(w, U, n_iterations=2),
    "weight_standardize": lambda w: jn.weight_standardize(w),
}


@functools.cache
def _mesh():
    return jax.make_mesh((8,), ("d",))


def _loss(f):
    def loss(t):
        leaves = [leaf for leaf in jax.tree.leaves(f(t)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in leaves)

    return loss


def _check_sharded(f, data, spec):
    expected = f(data)
    grad_expected = jax.grad(_loss(f))(data)
    with jax.set_mesh(_mesh()):
        sharded = jax.device_put(data, NamedSharding(_mesh(), spec))
        got = jax.jit(f)(sharded)
        grad = jax.jit(jax.grad(_loss(f)))(sharded)
        assert grad.sharding.is_equivalent_to(sharded.sharding, data.ndim)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATION))
def test_batch_sharded_jit_equals_unsharded(name):
    _check_sharded(ACTIVATION[name], X, P("d"))


@pytest.mark.parametrize("spec", [P(None, None, None, "d"), P(None, None, "d", None)], ids=["out", "in"])
@pytest.mark.parametrize("name", sorted(WEIGHT))
def test_kernel_sharded_jit_equals_unsharded(name, spec):
    _check_sharded(WEIGHT[name], KERNEL, spec)


def test_spectral_norm_inside_shard_map_on_local_slices():
    """Each member normalizes its own slice of output features (its own u)."""
    us = RNG.standard_normal(C)
    f = jax.shard_map(
        lambda w, u: jn.spectral_norm(w, u, n_iterations=3),
        mesh=_mesh(), in_specs=(P(None, None, None, "d"), P("d")),
        out_specs=(P(None, None, None, "d"), P("d")),
    )
    with jax.set_mesh(_mesh()):
        w = jax.device_put(KERNEL, NamedSharding(_mesh(), P(None, None, None, "d")))
        u = jax.device_put(us, NamedSharding(_mesh(), P("d")))
        got_w, got_u = jax.jit(f)(w, u)
    for k in range(8):
        cols = slice(2 * k, 2 * k + 2)
        want_w, want_u = jn.spectral_norm(KERNEL[..., cols], us[cols], n_iterations=3)
        np.testing.assert_allclose(np.asarray(got_w)[..., cols], want_w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got_u)[cols], want_u, rtol=1e-12, atol=1e-12)
