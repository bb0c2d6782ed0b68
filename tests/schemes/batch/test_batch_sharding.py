"""BatchNorm across devices: shard_map, pmap and jit with a sharded batch.

Uses the 8 simulated CPU devices that ``conftest.py`` asks XLA for. Each
distributed result is compared with ``jn.batch_norm`` on the whole (global)
batch on one device, float64 unless stated:

* ``jax.shard_map`` over ``jax.make_mesh((8,), ("d",))`` with
  ``axis_name="d"``: outputs, running statistics (replicated, ``P()``) and
  gradients of a scalar loss;
* ``jax.pmap(..., axis_name="d")``, also with ``axis_index_groups`` (each
  group equals batch_norm on its part of the batch);
* ``jax.jit`` of plain batch_norm (no axis_name) on a batch sharded with
  ``NamedSharding(mesh, P("d"))`` (XLA's SPMD partitions the reduction);
* exactness across devices (float32 at mean 1e4: within 1e-6 of float64);
* one cross-device collective in the forward jaxpr, at most two with the
  backward pass.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

import pytest
from jax.extend import core as jex_core
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm as jn

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8 "
    "(tests/conftest.py sets it before jax is imported)",
)

TOL64 = dict(rtol=1e-10, atol=1e-10)
N_DEV = 8
COLLECTIVES = ("all_gather", "psum", "all_reduce")


@functools.cache
def _mesh():
    return jax.make_mesh((N_DEV,), ("d",))


def _shard(x):
    """``x`` placed with its batch axis split over the 8 devices."""
    return jax.device_put(x, NamedSharding(_mesh(), P("d")))


def _data(seed, shape, *, loc=2.0, spread=3.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-loc, loc) + rng.uniform(0.5, spread) * rng.standard_normal(shape)


def _params(seed, c):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, c), rng.standard_normal(c)


def _stats(c, dtype=jnp.float64):
    return jn.BatchStats.init(c, dtype)


def assert_stats_equal(a, b, **tol):
    np.testing.assert_allclose(a.mean, b.mean, **tol)
    np.testing.assert_allclose(a.var, b.var, **tol)
    assert int(a.count) == int(b.count)


def rel_l2(y, ref) -> float:
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def np_batch_norm(x, *, channel_axis=-1, eps=1e-5):
    """float64 reference output of training batch norm (no affine)."""
    x = np.asarray(x, np.float64)
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)


@functools.cache
def global_batch_norm(**kw):
    """batch_norm on the whole batch, one device, jitted: ``f(x, scale, bias, stats, where)``."""
    return jax.jit(lambda x, scale, bias, stats, where=None: jn.batch_norm(
        x, scale, bias, stats, training=True, where=where, **kw))


def sharded_batch_norm(**kw):
    """batch_norm under shard_map over the batch: ``f(x, scale, bias, stats, where)``.

    ``x`` (and ``where``) are split over the devices, the rest replicated;
    the output is split, the new running statistics replicated.
    """
    def local(x, scale, bias, stats, where):
        return jn.batch_norm(x, scale, bias, stats, training=True, axis_name="d", where=where,
                             **kw)

    def f(x, scale, bias, stats, where=None):
        w_spec = None if where is None else P("d")
        return jax.shard_map(
            local, mesh=_mesh(), in_specs=(P("d"), P(), P(), P(), w_spec),
            out_specs=(P("d"), P()),
        )(x, scale, bias, stats, where)

    return f


# ------------------------------------------------------------- shard_map --

# name -> (global shape, channel_axis, extra settings)
SHARD_CASES = {
    "nhwc": ((16, 3, 2, 4), -1, {}),
    "nc": ((16, 4), -1, {}),
    "nchw": ((16, 4, 3), 1, {}),
    "torch": ((16, 3, 4), -1, dict(convention="torch", momentum=0.3)),
    "torch_cumulative": ((16, 3, 4), -1, dict(convention="torch", momentum=None)),
}


@pytest.mark.parametrize("case", list(SHARD_CASES))
def test_shard_map_equals_global_batch(case):
    shape, channel_axis, kw = SHARD_CASES[case]
    c = shape[channel_axis]
    x = _data(1, shape)
    g, b = _params(2, c)
    stats = _stats(c)
    stats = stats._replace(count=jnp.asarray(2, jnp.int32))
    f = jax.jit(sharded_batch_norm(channel_axis=channel_axis, **kw))
    y, new = f(_shard(x), g, b, stats)
    y_ref, new_ref = global_batch_norm(channel_axis=channel_axis, **kw)(x, g, b, stats)
    np.testing.assert_allclose(y, y_ref, **TOL64)
    assert_stats_equal(new, new_ref, **TOL64)
    assert int(new.count) == 3


@pytest.mark.parametrize("mask", ["entries", "whole_shards"])
def test_shard_map_with_mask_equals_global_batch(mask):
    """Masks, including devices whose whole shard is masked (no entries)."""
    shape = (16, 3, 4)
    rng = np.random.default_rng(3)
    x = _data(4, shape)
    if mask == "entries":
        where = rng.random(shape) < 0.6
        where[:2] = True
    else:  # devices 0, 1 and 5 hold only padding
        where = np.ones(shape, bool)
        where[0:4] = False
        where[10:12] = False
        x = np.where(where, x, np.nan)
    g, b = _params(5, 4)
    stats = _stats(4)
    y, new = jax.jit(sharded_batch_norm(momentum=0.5))(_shard(x), g, b, stats, _shard(where))
    y_ref, new_ref = global_batch_norm(momentum=0.5)(x, g, b, stats, where)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, y_ref, **TOL64)
    assert_stats_equal(new, new_ref, **TOL64)


def test_shard_map_gradients_match_global():
    shape = (16, 3, 4)
    rng = np.random.default_rng(6)
    x = _data(7, shape)
    g, b = _params(8, 4)
    w = rng.standard_normal(shape)
    stats = _stats(4)
    f = sharded_batch_norm()

    def loss_sharded(x, g, b):
        return jnp.sum(f(x, g, b, stats)[0] * w)

    def loss_global(x, g, b):
        return jnp.sum(jn.batch_norm(x, g, b, stats, training=True)[0] * w)

    with jax.set_mesh(_mesh()):  # the loss's cotangent lives on the mesh too
        grads = jax.jit(jax.grad(loss_sharded, argnums=(0, 1, 2)))(_shard(x), g, b)
        t = rng.standard_normal(shape)
        _, tangent = jax.jit(lambda x, t: jax.jvp(lambda x: loss_sharded(x, g, b), (x,), (t,)))(
            _shard(x), _shard(t))
    ref = jax.jit(jax.grad(loss_global, argnums=(0, 1, 2)))(x, g, b)
    for d, r in zip(grads, ref):
        np.testing.assert_allclose(d, r, **TOL64)
    _, ref_tangent = jax.jit(lambda x, t: jax.jvp(lambda x: loss_global(x, g, b), (x,), (t,)))(
        x, t)
    np.testing.assert_allclose(tangent, ref_tangent, **TOL64)


# ------------------------------------------------------------------ pmap --


def _member(stats, k):
    """The statistics held by pmap member ``k``."""
    return jn.BatchStats(*(t[k] for t in stats))


@pytest.mark.parametrize("shape", [(16, 3, 4), (16, 4)], ids=["rank3", "rank2"])
def test_pmap_equals_global_batch(shape):
    x = _data(9, shape)
    g, b = _params(10, 4)
    stats = _stats(4)
    f = jax.pmap(lambda xl: jn.batch_norm(xl, g, b, stats, training=True, axis_name="d"),
                 axis_name="d")
    y, new = f(x.reshape((N_DEV, -1) + shape[1:]))
    y_ref, new_ref = global_batch_norm()(x, g, b, stats)
    np.testing.assert_allclose(np.asarray(y).reshape(shape), y_ref, **TOL64)
    for k in range(N_DEV):  # every device holds the global statistics
        assert_stats_equal(_member(new, k), new_ref, **TOL64)


def test_pmap_axis_index_groups_equal_halves():
    shape = (16, 3, 4)
    x = _data(11, shape)
    g, b = _params(12, 4)
    stats = _stats(4)
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    f = jax.pmap(lambda xl: jn.batch_norm(xl, g, b, stats, training=True, axis_name="d",
                                          axis_index_groups=groups), axis_name="d")
    y, new = f(x.reshape((N_DEV, -1) + shape[1:]))
    halves = [global_batch_norm()(x[:8], g, b, stats), global_batch_norm()(x[8:], g, b, stats)]
    np.testing.assert_allclose(np.asarray(y).reshape(shape),
                               np.concatenate([halves[0][0], halves[1][0]]), **TOL64)
    for k in range(N_DEV):
        assert_stats_equal(_member(new, k), halves[k // 4][1], **TOL64)


# ------------------------------------------------------ jit, sharded batch --


@pytest.mark.parametrize(
    "shape, channel_axis, masked",
    [((16, 3, 4), -1, False), ((16, 4, 3), 1, False), ((16, 4), -1, False), ((16, 3, 4), -1, True)],
    ids=["nlc", "ncl", "nc", "masked"],
)
def test_jit_sharded_batch_equals_unsharded(shape, channel_axis, masked):
    x = _data(13, shape)
    c = shape[channel_axis]
    g, b = _params(14, c)
    stats = _stats(c)
    where = (np.random.default_rng(15).random(shape) < 0.7) if masked else None
    f = jax.jit(lambda x, w: jn.batch_norm(x, g, b, stats, training=True,
                                           channel_axis=channel_axis, where=w))
    y, new = f(_shard(x), None if where is None else _shard(where))
    y_ref, new_ref = f(x, where)
    np.testing.assert_allclose(y, y_ref, **TOL64)
    assert_stats_equal(new, new_ref, **TOL64)
    # Inference on the sharded batch as well.
    fi = jax.jit(lambda x: jn.batch_norm(x, g, b, new_ref, training=False,
                                         channel_axis=channel_axis)[0])
    np.testing.assert_allclose(fi(_shard(x)), fi(x), **TOL64)


# ------------------------------------------------------------- exactness --


@pytest.mark.parametrize("mean", [1e4, 1e6])
def test_float32_large_mean_exact_across_devices(mean):
    """Unit spread at a large mean, float32: within 1e-6 (L2) of float64 on the global batch."""
    rng = np.random.default_rng(16)
    shape = (32, 4, 8)
    x = (mean + rng.standard_normal(shape)).astype(np.float32)
    ref = np_batch_norm(x)
    stats = _stats(8, jnp.float32)
    y_sm, new = jax.jit(sharded_batch_norm(momentum=0.0))(
        _shard(x), None, None, stats)
    y_jit, new_jit = jax.jit(lambda x: jn.batch_norm(x, None, None, stats, training=True,
                                                     momentum=0.0))(_shard(x))
    assert y_sm.dtype == jnp.float32 and y_jit.dtype == jnp.float32
    assert rel_l2(y_sm, ref) < 1e-6
    assert rel_l2(y_jit, ref) < 1e-6
    x64 = x.astype(np.float64)
    for s in (new, new_jit):
        np.testing.assert_allclose(s.mean, x64.mean((0, 1)), rtol=1e-6)
        np.testing.assert_allclose(s.var, x64.var((0, 1)), rtol=1e-4)


def test_float32_large_mean_exact_uneven_masked_shards():
    """Members with different entry counts (some none) still pool exactly."""
    rng = np.random.default_rng(17)
    shape = (32, 4, 8)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    where = rng.random(shape) < np.linspace(0.0, 1.0, 32).reshape(32, 1, 1)
    x64 = x.astype(np.float64)
    m = np.where(where, x64, 0).sum((0, 1)) / where.sum((0, 1))
    v = (np.where(where, x64 - m, 0) ** 2).sum((0, 1)) / where.sum((0, 1))
    ref = np.where(where, (x64 - m) / np.sqrt(v + 1e-5), 0)
    y, _ = jax.jit(sharded_batch_norm())(_shard(x), None, None, _stats(8, jnp.float32),
                                         _shard(where))
    assert rel_l2(y, ref) < 1e-6


# ----------------------------------------------------------- collectives --


def _subjaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def collectives(jaxpr) -> list[str]:
    """Names of the cross-device collective equations, recursively through sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if any(k in eqn.primitive.name for k in COLLECTIVES):
            found.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                found.extend(collectives(sub))
    return found


@pytest.mark.parametrize("masked", [False, True])
def test_forward_uses_one_collective(masked):
    shape = (16, 3, 4)
    x = _shard(_data(18, shape))
    where = _shard(np.random.default_rng(19).random(shape) < 0.7) if masked else None
    g, b = _params(20, 4)
    f = sharded_batch_norm()
    jaxpr = jax.make_jaxpr(lambda x, w: f(x, g, b, _stats(4), w))(x, where)
    assert len(collectives(jaxpr.jaxpr)) == 1, collectives(jaxpr.jaxpr)


def test_forward_and_backward_compile_to_one_gather_and_one_reduce():
    shape = (16, 3, 4)
    x = _shard(_data(21, shape))
    g, b = _params(22, 4)
    w = np.random.default_rng(23).standard_normal(shape)
    f = sharded_batch_norm()

    def loss(x, g, b):
        return jnp.sum(f(x, g, b, _stats(4))[0] * w)

    # Forward: the all_gather of the moments; backward: the psum of E[g] and
    # E[g·x̂]. JAX's transpose emits that psum once per term; XLA combines
    # them, so the compiled program is what is counted.
    with jax.set_mesh(_mesh()):
        compiled = jax.jit(jax.grad(loss, argnums=0)).lower(x, g, b).compile().as_text()
    gathers = len(re.findall(r"all-gather(?:-start)?\(", compiled))
    reduces = len(re.findall(r"all-reduce(?:-start)?\(", compiled))
    assert gathers == 1 and reduces == 1, (gathers, reduces)


def test_shift_samples_on_a_sharded_axis_are_the_unsharded_ones():
    """The accelerator program's shift samples: the same entries whether or not the axis is sharded."""
    from jaxnorm._core.reduction import Reduction

    x = _data(24, (16, 3, 4))
    where = np.random.default_rng(25).random(x.shape) < 0.7
    r = Reduction(axes=(0, 1))
    sharded = jax.jit(lambda x, w: r.samples(x, w))(_shard(x), _shard(where))
    plain = r.samples(jnp.asarray(x), jnp.asarray(where))
    for a, b in zip(sharded, plain):
        np.testing.assert_array_equal(a, b)
    first = jax.jit(r.first_selected)(_shard(x), _shard(where))
    for a, b in zip(first, r.first_selected(jnp.asarray(x), jnp.asarray(where))):
        np.testing.assert_array_equal(a, b)
