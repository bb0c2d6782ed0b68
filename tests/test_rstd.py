"""set_rstd (jaxnorm._rstd): 1/sqrt(var + ε) per set with a closed-form derivative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnorm._rstd import set_rstd
from jaxnorm._stats import Reduction

EPS = 1e-3
REDUCTIONS = {
    "rows": Reduction((2,)),
    "spatial": Reduction((1,)),
    "groups": Reduction((1,), group_axis=2, num_groups=2),
}


def _textbook(x, reduction):
    """The same quantity written op by op (float64 oracle for the derivative)."""
    if reduction.group_axis is None:
        var = jnp.var(x, reduction.axes, keepdims=True)
        return 1 / jnp.sqrt(var + EPS)
    n, s, c = x.shape
    g = x.reshape(n, s, reduction.num_groups, c // reduction.num_groups)
    var = jnp.var(g, (1, 3), keepdims=True)
    r = jnp.broadcast_to(1 / jnp.sqrt(var + EPS), (n, 1, reduction.num_groups, c // reduction.num_groups))
    return r.reshape(n, 1, c)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_value_and_derivatives_match_op_by_op_float64(name):
    reduction = REDUCTIONS[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 4)) * 2 + 1, jnp.float64)
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float64)
    f = lambda x: set_rstd(x, reduction, EPS)
    ref = lambda x: _textbook(x, reduction)
    y, y_dot = jax.jvp(f, (x,), (t,))
    y_ref, y_dot_ref = jax.jvp(ref, (x,), (t,))
    np.testing.assert_allclose(jnp.broadcast_to(y, y_ref.shape), y_ref, rtol=1e-12)
    np.testing.assert_allclose(jnp.broadcast_to(y_dot, y_ref.shape), y_dot_ref, rtol=1e-10, atol=1e-12)
    w = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float64)
    grad = jax.grad(lambda x: jnp.sum(jnp.broadcast_to(f(x), w.shape) * w))(x)
    grad_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_check_grads_order_2(name):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 4)), jnp.float64)
    check_grads(lambda x: set_rstd(x, REDUCTIONS[name], EPS), (x,), order=2, modes=("fwd", "rev"))


def test_derivative_exact_at_large_mean_float32():
    # (x − μ) is formed from the shifted moments: the derivative at mean 1e4
    # matches the float64 one computed on the same float32 input.
    rng = np.random.default_rng(2)
    x32 = (rng.standard_normal((2, 256, 3)) + 1e4).astype(np.float32)
    w = rng.standard_normal((2, 1, 3))
    red = Reduction((1,))
    loss = lambda x: jnp.sum(set_rstd(x, red, EPS) * w)
    g32 = np.asarray(jax.grad(loss)(jnp.asarray(x32)), np.float64)
    g64 = np.asarray(jax.grad(lambda x: jnp.sum(_textbook(x, red) * w))(jnp.asarray(x32, jnp.float64)))
    assert np.linalg.norm(g32 - g64) / np.linalg.norm(g64) < 1e-5
