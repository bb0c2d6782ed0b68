"""Transformations: jit, vmap, forward and reverse derivatives of order 2; masks; constants (both programs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from norm_cases import CASES, params

# Every test runs with the CPU program and with the accelerator program (conftest.py).
pytestmark = pytest.mark.usefixtures("program")


def _inputs(case, seed=0, dtype=np.float64, per_example=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape).astype(dtype)
    scale, bias = params(case, rng, dtype, per_example=per_example)
    return rng, x, scale, bias


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("per_example", [False, True])
def test_matches_reference(case, per_example):
    _, x, scale, bias = _inputs(case, per_example=per_example)
    y = case.fn(x, scale, bias, None)
    np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jit_equals_eager(case):
    rng, x, scale, bias = _inputs(case, dtype=np.float32)
    where = jnp.asarray(rng.random(case.shape) < 0.8)
    eager = case.fn(x, scale, bias, where)
    jitted = jax.jit(lambda *a: case.fn(*a))(x, scale, bias, where)  # traced for this program
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_vmap_equals_loop(case):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((3,) + case.shape)
    scale, bias = params(case, rng, np.float64)
    batched = jax.vmap(lambda x: case.fn(x, scale, bias, None))(xs)
    looped = np.stack([case.fn(x, scale, bias, None) for x in xs])
    np.testing.assert_allclose(batched, looped, rtol=1e-12, atol=1e-12)
    # Batching the parameters as well (e.g. one conditioning per batch element).
    scales = np.stack([scale * (i + 1) for i in range(3)])
    batched = jax.vmap(lambda x, s: case.fn(x, s, bias, None))(xs, scales)
    looped = np.stack([case.fn(x, s, bias, None) for x, s in zip(xs, scales)])
    np.testing.assert_allclose(batched, looped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("variant", ["plain", "masked", "per_example", "no_affine"])
def test_check_grads_fwd_rev(case, variant):
    rng, x, scale, bias = _inputs(case, seed=2, per_example=variant == "per_example")
    where = jnp.asarray(rng.random(case.shape) < 0.75) if variant == "masked" else None
    if variant == "no_affine":
        f = lambda x: case.fn(x, None, None, where)  # noqa: E731
        args = (x,)
    elif case.has_bias:
        f = lambda x, s, b: case.fn(x, s, b, where)  # noqa: E731
        args = (x, scale, bias)
    else:
        f = lambda x, s: case.fn(x, s, None, where)  # noqa: E731
        args = (x, scale)
    # Second order for the plain and masked statistics; the per-example and
    # affine-free variants share those statistics and check their own
    # (first-order) parameter derivatives.
    order = 2 if variant in ("plain", "masked") else 1
    check_grads(f, args, order=order, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradient_matches_reference_finite_differences(case):
    """Reverse-mode dx against central differences of the float64 NumPy oracle."""
    rng, x, scale, bias = _inputs(case, seed=3)
    cot = rng.standard_normal(case.shape)
    grad = jax.grad(lambda x: jnp.sum(case.fn(x, scale, bias, None) * cot))(x)
    h = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        plus = np.sum(case.ref(x + e, scale, bias, None) * cot)
        minus = np.sum(case.ref(x - e, scale, bias, None) * cot)
        numeric[idx] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_input_gives_bias_and_finite_gradients(case, dtype):
    rng = np.random.default_rng(4)
    x = np.full(case.shape, 3.25, dtype)
    scale, bias = params(case, rng, dtype)
    y = case.fn(x, scale, bias, None)
    np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-5, atol=1e-6)
    if case.has_bias:  # centered: a constant normalizes to 0, leaving the bias
        np.testing.assert_allclose(y, case.ref(x, 0 * scale, bias, None), atol=1e-6)
    cot = rng.standard_normal(case.shape).astype(dtype)
    grads = jax.grad(lambda x, s: jnp.sum(case.fn(x, s, bias, None) * cot), argnums=(0, 1))(x, scale)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_epsilon_zero_constant_set_gives_bias_and_finite_gradients(case):
    """Issue 23, item 5: with epsilon=0 a set of equal entries has variance exactly 0; its
    output is the bias (0 without one) and every gradient is finite (flax and PyTorch give NaN)."""
    rng = np.random.default_rng(12)
    x = np.full(case.shape, -1.75, np.float32)
    scale, bias = params(case, rng, np.float32)
    fn = lambda x, s, b: _with_epsilon_zero(case)(x, s, b)  # noqa: E731
    y = jax.jit(fn)(x, scale, bias)
    want = case.ref(x.astype(np.float64), 0 * scale, bias, None) if case.has_bias else np.zeros(x.shape)
    if case.name == "rms_norm":  # uncentered: a constant normalizes to ±1, not 0
        want = case.ref(x.astype(np.float64), scale, bias, None)
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-6)
    cot = rng.standard_normal(case.shape).astype(np.float32)
    argnums = (0, 1, 2) if case.has_bias else (0, 1)
    grads = jax.jit(jax.grad(lambda x, s, b: jnp.sum(fn(x, s, b) * cot), argnums=argnums))(x, scale, bias)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


def _with_epsilon_zero(case):
    """``case.fn`` with epsilon=0 (the cases' functions take the library default)."""
    import jaxnorm as jn

    name = case.name
    if name.startswith("layer_norm"):
        axis = -1 if name == "layer_norm" else (1, 3)
        return lambda x, s, b: jn.layer_norm(x, s, b, axis=axis, epsilon=0.0)
    if name == "rms_norm":
        return lambda x, s, b: jn.rms_norm(x, s, epsilon=0.0)
    if name.startswith("group_norm"):
        groups, axis = {"group_norm_nchw": (2, 1), "group_norm_nhwc": (3, -1), "group_norm_3d": (3, -1),
                        "group_norm_no_spatial": (2, -1), "group_norm_one_per_set": (8, -1)}.get(name, (2, -1))
        return lambda x, s, b: jn.group_norm(x, s, b, num_groups=groups, channel_axis=axis, epsilon=0.0)
    axis = 1 if name == "instance_norm_ncw" else -1
    return lambda x, s, b: jn.instance_norm(x, s, b, channel_axis=axis, epsilon=0.0)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
def test_masked_entries_change_nothing(case, poison):
    rng, x, scale, bias = _inputs(case, seed=5)
    where = rng.random(case.shape) < 0.7
    where.flat[0] = True  # every case keeps at least one entry
    poisoned = np.where(where, x, poison)
    cot = rng.standard_normal(case.shape)

    def value_and_grads(x):
        f = lambda x, s: jnp.sum(case.fn(x, s, bias, jnp.asarray(where)) * cot)  # noqa: E731
        return jax.value_and_grad(f, argnums=(0, 1))(x, scale)

    y_clean = case.fn(x, scale, bias, where)
    y_poison = case.fn(poisoned, scale, bias, where)
    np.testing.assert_array_equal(y_poison, y_clean)
    np.testing.assert_array_equal(np.asarray(y_poison)[~where], 0)
    np.testing.assert_allclose(y_clean, case.ref(x, scale, bias, where), rtol=1e-12, atol=1e-12)
    (v_clean, g_clean), (v_poison, g_poison) = value_and_grads(x), value_and_grads(poisoned)
    assert np.isfinite(v_poison) and v_poison == v_clean
    for a, b in zip(g_clean, g_poison):
        assert np.isfinite(np.asarray(b)).all()
        np.testing.assert_array_equal(a, b)
    # Forward mode too.
    tangent = rng.standard_normal(case.shape)
    _, t_clean = jax.jvp(lambda x: case.fn(x, scale, bias, where), (x,), (tangent,))
    _, t_poison = jax.jvp(lambda x: case.fn(x, scale, bias, where), (poisoned,), (tangent,))
    np.testing.assert_array_equal(t_clean, t_poison)


def test_fully_masked_set_gives_zeros():
    import jaxnorm as jn

    x = np.random.default_rng(6).standard_normal((2, 4, 6))
    where = np.ones(x.shape, bool)
    where[0] = False  # example 0 entirely masked
    y = jn.group_norm(x, np.ones(6), np.ones(6), num_groups=2, where=where)
    np.testing.assert_array_equal(np.asarray(y)[0], 0)
    assert np.isfinite(np.asarray(y)).all()
