"""Exactness: float32 statistics stay exact at large means; half precision is promoted."""

import numpy as np
import pytest

import jax.numpy as jnp

from norm_cases import CASES, params


def rel_l2(y, ref):
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("mean", [0.0, 1e2, 1e4, 1e6])
def test_float32_large_mean_within_1e6(case, mean):
    """Unit spread around `mean`: output within 1e-6 (L2) of float64 on the same inputs."""
    rng = np.random.default_rng(0)
    shape = tuple(4 * s for s in case.shape)  # larger sets, where cancellation bites
    x = (mean + rng.standard_normal(shape)).astype(np.float32)
    scale = bias = None
    y = case.fn(jnp.asarray(x), scale, bias, None)
    assert y.dtype == jnp.float32
    assert rel_l2(y, case.ref(x, scale, bias, None)) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("mean", [1e4, 1e6])
def test_float32_large_mean_with_mask_and_affine(case, mean):
    rng = np.random.default_rng(1)
    x = (mean + rng.standard_normal(case.shape)).astype(np.float32)
    where = rng.random(case.shape) < 0.7
    scale, bias = params(case, rng, np.float32)
    y = case.fn(jnp.asarray(x), scale, bias, jnp.asarray(where))
    assert rel_l2(y, case.ref(x, scale, bias, where)) < 1e-6


def test_float32_mean_1e6_large_groups():
    """A realistic activation: 4096 entries per group at mean 1e6."""
    import jaxnorm as jn
    from jaxnorm import reference

    rng = np.random.default_rng(2)
    x = (1e6 + rng.standard_normal((2, 16, 16, 64))).astype(np.float32)
    y = jn.group_norm(jnp.asarray(x), num_groups=4)
    assert rel_l2(y, reference.group_norm(x, num_groups=4)) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)])
def test_half_precision_promoted(case, dtype, tol):
    """bf16/f16 in, same dtype out; statistics in float32 (errors at output rounding)."""
    rng = np.random.default_rng(3)
    # Mean 300, spread 30: x² overflows float16 (max 65504) if squared in float16.
    x = jnp.asarray(300 + 30 * rng.standard_normal(tuple(4 * s for s in case.shape)), dtype)
    y = case.fn(x, None, None, None)
    assert y.dtype == dtype
    assert np.isfinite(np.asarray(y, np.float32)).all()
    ref = case.ref(np.asarray(x, np.float64), None, None, None)
    assert rel_l2(np.asarray(y, np.float32), ref) < tol


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float64_stays_float64(case):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(case.shape)
    scale, bias = params(case, rng, np.float64)
    y = case.fn(jnp.asarray(x), scale, bias, None)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-12, atol=1e-12)


def test_the_shift_is_what_keeps_large_means_exact():
    """Measurement switch: without the shift the same code loses digits; the default keeps them."""
    import jax

    import jaxnorm
    from jaxnorm._stats import unshifted_statistics

    x = (1e4 + np.random.default_rng(5).standard_normal((8, 6, 6, 32))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    # jit caches by function, so each mode gets a function of its own
    with unshifted_statistics():
        textbook = jax.jit(lambda t: jaxnorm.layer_norm(t))(x)
    exact = jax.jit(lambda t: jaxnorm.layer_norm(t))(x)  # traced after the context: shifted again
    assert rel_l2(textbook, ref) > 1e-5
    assert rel_l2(exact, ref) < 1e-6


def _moments(x, axes):
    import jax

    from jaxnorm._stats import Reduction, moments

    return jax.jit(lambda t: moments(t, Reduction(axes)))(x)


def test_well_conditioned_sets_take_the_textbook_branch_ill_conditioned_the_shifted():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 4, 4, 16)).astype(np.float32)
    for mean, textbook in ((0.5, True), (1e3, False)):
        x = (mean + z).astype(np.float32)
        mo = _moments(x, (1, 2))
        # the textbook branch uses the mean as its shift; the shifted one, a sample
        sample = x[:, :1, :1, :]
        assert np.array_equal(np.asarray(mo.shift), sample) != textbook
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(mo.mean, x64.mean((1, 2), keepdims=True), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mo.var, x64.var((1, 2), keepdims=True), rtol=1e-5)


def test_one_ill_conditioned_set_sends_every_set_to_the_shifted_moments():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[3] += 1e4  # one row far from zero
    mo = _moments(x, (1,))
    np.testing.assert_array_equal(mo.shift, x[:, :1])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mo.var, x64.var(1, keepdims=True), rtol=1e-5)


def test_vmap_over_mixed_conditioning_is_exact_per_example():
    import jax

    import jaxnorm

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 8, 8, 16)).astype(np.float32)
    x[1] += 1e4
    y = jax.vmap(jaxnorm.instance_norm)(x)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean((2, 3), keepdims=True)) / np.sqrt(x64.var((2, 3), keepdims=True) + 1e-5)
    for i in range(3):
        assert rel_l2(y[i], ref[i]) < 3e-7
