"""pool_moments and tangent_sums (jaxnorm._core.moments): merging per-set moments exactly, and their tangents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm._core.moments import Reduction, moments, pool_moments


def _mean_var(mo):
    return np.asarray(mo.shift, np.float64) + np.asarray(mo.mean_shifted, np.float64), np.asarray(mo.var, np.float64)


@pytest.mark.parametrize("axes", [(3,), (0,), (0, 3)])
def test_pooled_instance_moments_equal_direct_moments_float64(axes):
    rng = np.random.default_rng(0)
    # channels and examples with different means and spreads
    x = rng.standard_normal((4, 5, 6, 3)) * rng.uniform(0.5, 3, (4, 1, 1, 3)) + rng.uniform(-5, 5, (4, 1, 1, 3))
    x = jnp.asarray(x, jnp.float64)
    pooled = pool_moments(moments(x, Reduction((1, 2))), axes)
    direct = moments(x, Reduction(tuple(sorted((1, 2) + axes))))
    for got, want in zip(_mean_var(pooled), _mean_var(direct)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert float(np.max(pooled.count)) == float(np.max(direct.count))


def test_pooling_is_exact_at_large_means_float32():
    # float32 sets around 1e4 whose means differ by O(1): the pooled variance
    # must match float64 statistics of the same float32 numbers.
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal((2, 64, 4)) + rng.uniform(-1, 1, (2, 1, 4)) + 1e4).astype(np.float32)
    pooled = pool_moments(moments(jnp.asarray(x32), Reduction((1,))), (2,))
    x64 = x32.astype(np.float64)
    mean, var = _mean_var(pooled)
    np.testing.assert_allclose(mean[:, 0, 0], x64.mean(axis=(1, 2)), rtol=1e-7)
    np.testing.assert_allclose(var[:, 0, 0], x64.var(axis=(1, 2)), rtol=1e-5)


def test_gradients_flow_through_pooled_moments():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4, 2)), jnp.float64)
    f = lambda x: jnp.sum(pool_moments(moments(x, Reduction((1,))), (2,)).var)
    g = jax.grad(f)(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.var(x, axis=(1, 2))))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)


def test_tangent_sums_are_the_moments_tangents_ingredients():
    # μ̇ = A/n and σ̇²/2 = (B − (μ − s)·A)/n against jax.jvp of the float64 moments.
    from jaxnorm._core.moments import tangent_sums

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((3, 5, 4)) + 50, jnp.float64)
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float64)
    red = Reduction((1,))
    mo = moments(x, red)
    a, b = tangent_sums(x, t, mo.shift, red)
    (mean, var), (mean_dot, var_dot) = jax.jvp(
        lambda x: (jnp.mean(x, 1, keepdims=True), jnp.var(x, 1, keepdims=True)), (x,), (t,))
    np.testing.assert_allclose(a / 5, mean_dot, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((b - (mean - mo.shift) * a) / 5, var_dot / 2, rtol=1e-10, atol=1e-12)
