"""s0_gate (jaxnorm._schemes.local.evonorm_s0): x·σ(v·x)/sqrt(var_G + ε) with a closed-form derivative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnorm._core.moments import Reduction
from jaxnorm._schemes.local.evonorm_s0 import s0_gate

EPS = 1e-3
REDUCTIONS = {
    "spatial": Reduction((1,)),
    "groups": Reduction((1,), group_axis=2, num_groups=2),
}


def _op_by_op(x, slope, reduction):
    """The same function written op by op (float64 oracle for the derivative)."""
    n, s, c = x.shape
    groups = c if reduction.group_axis is None else reduction.num_groups
    g = x.reshape(n, s, groups, c // groups)
    var = jnp.var(g, (1, 3), keepdims=True)
    r = jnp.broadcast_to(1 / jnp.sqrt(var + EPS), (n, 1, groups, c // groups)).reshape(n, 1, c)
    return x * jax.nn.sigmoid(slope * x) * r


def _inputs(seed, slope_shape, mean=1.0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((3, 5, 4)) * 2 + mean, dtype)
    slope = jnp.asarray(rng.uniform(0.2, 1.5, slope_shape), dtype)
    return x, slope


@pytest.mark.parametrize("slope_shape", [(1, 1, 4), (3, 1, 4)], ids=["per-channel", "per-example"])
@pytest.mark.parametrize("name", REDUCTIONS)
def test_value_and_derivatives_match_op_by_op_float64(name, slope_shape):
    reduction = REDUCTIONS[name]
    x, slope = _inputs(0, slope_shape)
    rng = np.random.default_rng(1)
    tx, ts = (jnp.asarray(rng.standard_normal(a.shape), jnp.float64) for a in (x, slope))
    f = lambda x, v: s0_gate(reduction, EPS, x, v)
    ref = lambda x, v: _op_by_op(x, v, reduction)
    y, y_dot = jax.jvp(f, (x, slope), (tx, ts))
    y_ref, y_dot_ref = jax.jvp(ref, (x, slope), (tx, ts))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(y_dot, y_dot_ref, rtol=1e-10, atol=1e-12)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float64)
    grads = jax.grad(lambda x, v: jnp.sum(f(x, v) * w), argnums=(0, 1))(x, slope)
    grads_ref = jax.grad(lambda x, v: jnp.sum(ref(x, v) * w), argnums=(0, 1))(x, slope)
    for got, want in zip(grads, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_check_grads_order_2(name):
    x, slope = _inputs(2, (1, 1, 4))
    check_grads(lambda x, v: s0_gate(REDUCTIONS[name], EPS, x, v), (x, slope), order=2, modes=("fwd", "rev"))


def test_derivative_exact_at_large_mean_float32():
    # (x − μ) comes from the shifted moments: at mean 1e4 the float32
    # gradient matches the float64 one computed on the same float32 input.
    # A small slope keeps the gate away from saturation.
    rng = np.random.default_rng(3)
    x32 = (rng.standard_normal((2, 256, 4)) + 1e4).astype(np.float32)
    slope = np.full((1, 1, 4), 1e-4, np.float32)
    w = rng.standard_normal(x32.shape)
    red = REDUCTIONS["groups"]
    loss = lambda x, f: jnp.sum(f(x) * w)
    g32 = jax.grad(loss)(jnp.asarray(x32), lambda x: s0_gate(red, EPS, x, jnp.asarray(slope)))
    g64 = jax.grad(loss)(jnp.asarray(x32, jnp.float64),
                         lambda x: _op_by_op(x, jnp.asarray(slope, jnp.float64), red))
    g32, g64 = np.asarray(g32, np.float64), np.asarray(g64)
    assert np.linalg.norm(g32 - g64) / np.linalg.norm(g64) < 1e-5
