"""The contract every implementation of an operation meets: one test base, run against each implementation.

A test file per operation (``tests/schemes/per_example/test_layer_norm.py``,
``test_rms_norm.py``, ``test_group_norm.py``, ``test_instance_norm.py``;
``tests/schemes/batch/test_batch_norm.py`` for BatchNorm in training)
subclasses :class:`OperationContract` with the operation's cases from
``tests/norm_cases.py``; conftest.py's ``pytest_generate_tests`` runs each
test of the base for every (case, implementation) pair the implementation
supports (``tests/implementations.py``: XLA's CPU program, XLA's
accelerator program, the Triton kernels). So the XLA path, the program
GPUs and TPUs compile, and the kernels are held to the same tests, against
the same float64 oracles (``jaxnorm.reference``), not to parallel copies.

What is checked: values against float64 at means 0 to 1e6 and in half
precision; ``jit`` against eager and ``vmap`` against a loop; reverse-mode
derivatives of the input and the parameters against central differences of
the float64 oracle; forward and reverse modes to second order
(``check_grads``); constant inputs, ``epsilon=0`` on a constant set; masks
(poisoned masked entries change nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from implementations import FLOAT64, FORWARD_MODE, MASK, PER_EXAMPLE, SECOND_ORDER, ZERO_VARIANCE, needs
from norm_cases import params

# Relative L2 error allowed against float64 for float32 results (statistics in float32).
FLOAT32_REL_L2 = 1e-6


def rel_l2(y, ref):
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def _inputs(case, seed=0, dtype=np.float64, per_example=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape).astype(dtype)
    scale, bias = params(case, rng, dtype, per_example=per_example)
    return rng, x, scale, bias


def _tolerance(dtype):
    """(rtol, atol) for comparing two computations that should agree up to ``dtype``'s rounding."""
    return (1e-12, 1e-12) if dtype == np.float64 else (2e-5, 2e-5)


def _numeric_gradient(f, args, cot, h):
    """Central differences of ``sum(f(*args) · cot)`` with respect to each of ``args`` (float64)."""
    grads = []
    for i, a in enumerate(args):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = [np.array(b, copy=True) for b in args], [np.array(b, copy=True) for b in args]
            plus[i][idx] += h
            minus[i][idx] -= h
            g[idx] = (np.sum(f(*plus) * cot) - np.sum(f(*minus) * cot)) / (2 * h)
        grads.append(g)
    return grads


def _check_constant_input(case, implementation, dtype):
    """A constant input normalizes to the bias (centered schemes); every gradient is finite."""
    rng = np.random.default_rng(4)
    x = np.full(case.shape, 3.25, dtype)
    scale, bias = params(case, rng, dtype)
    call = implementation.call(case)
    y = call(x, scale, bias, None)
    np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-5, atol=1e-6)
    if case.has_bias:  # centered: a constant normalizes to 0, leaving the bias
        np.testing.assert_allclose(y, case.ref(x, 0 * scale, bias, None), atol=1e-6)
    cot = rng.standard_normal(case.shape).astype(dtype)
    grads = jax.grad(lambda x, s: jnp.sum(call(x, s, bias, None) * cot), argnums=(0, 1))(x, scale)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


class OperationContract:
    """Tests every implementation of one operation must pass; subclasses set ``cases``.

    Each test takes ``case`` (a ``NormCase``) and ``implementation`` (an
    ``Implementation``, its ``cpu_lowering`` in effect while the test runs);
    a test marked ``@needs(...)`` runs only for implementations with those
    capabilities. Functions are jitted inside each test, so they are traced
    for the implementation under test.
    """

    cases: list = []

    # -- values -------------------------------------------------------------------------

    @needs(FLOAT64)
    def test_float64_matches_reference(self, case, implementation):
        _, x, scale, bias = _inputs(case)
        y = implementation.call(case)(jnp.asarray(x), scale, bias, None)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-12, atol=1e-12)

    @needs(FLOAT64, PER_EXAMPLE)
    def test_per_example_parameters_match_reference(self, case, implementation):
        _, x, scale, bias = _inputs(case, per_example=True)
        y = implementation.call(case)(x, scale, bias, None)
        np.testing.assert_allclose(y, case.ref(x, scale, bias, None), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("mean", [0.0, 1e2, 1e4, 1e6])
    def test_float32_large_mean_within_1e6(self, case, implementation, mean):
        """Unit spread around `mean`: output within 1e-6 (L2) of float64 on the same inputs."""
        rng = np.random.default_rng(0)
        shape = tuple(implementation.scale * s for s in case.shape)  # larger sets, where cancellation bites
        x = (mean + rng.standard_normal(shape)).astype(np.float32)
        y = implementation.call(case)(jnp.asarray(x), None, None, None)
        assert y.dtype == jnp.float32
        assert rel_l2(y, case.ref(x, None, None, None)) < FLOAT32_REL_L2

    @pytest.mark.parametrize("mean", [1e4, 1e6])
    def test_float32_large_mean_with_affine_and_mask(self, case, implementation, mean):
        """As above with parameters, and a mask where the implementation takes one."""
        rng = np.random.default_rng(1)
        x = (mean + rng.standard_normal(case.shape)).astype(np.float32)
        where = rng.random(case.shape) < 0.7 if implementation.supports(case, {MASK}) else None
        scale, bias = params(case, rng, np.float32)
        y = implementation.call(case)(jnp.asarray(x), scale, bias, None if where is None else jnp.asarray(where))
        assert rel_l2(y, case.ref(x, scale, bias, where)) < FLOAT32_REL_L2

    @pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)])
    def test_half_precision_promoted(self, case, implementation, dtype, tol):
        """bf16/f16 in, same dtype out; statistics in float32 (errors at output rounding)."""
        rng = np.random.default_rng(3)
        # Mean 300, spread 30: x² overflows float16 (max 65504) if squared in float16.
        x = jnp.asarray(300 + 30 * rng.standard_normal(tuple(implementation.scale * s for s in case.shape)), dtype)
        y = implementation.call(case)(x, None, None, None)
        assert y.dtype == dtype
        assert np.isfinite(np.asarray(y, np.float32)).all()
        ref = case.ref(np.asarray(x, np.float64), None, None, None)
        assert rel_l2(np.asarray(y, np.float32), ref) < tol

    def test_constant_input_gives_bias_and_finite_gradients(self, case, implementation):
        _check_constant_input(case, implementation, np.float32)

    @needs(FLOAT64)
    def test_constant_input_gives_bias_and_finite_gradients_float64(self, case, implementation):
        _check_constant_input(case, implementation, np.float64)

    @needs(ZERO_VARIANCE)
    def test_epsilon_zero_constant_set_gives_bias_and_finite_gradients(self, case, implementation):
        """Issue 23, item 5: with epsilon=0 a set of equal entries has variance exactly 0; its
        output is the bias (0 without one) and every gradient is finite (flax and PyTorch give NaN)."""
        rng = np.random.default_rng(12)
        x = np.full(case.shape, -1.75, np.float32)
        scale, bias = params(case, rng, np.float32)
        fn = lambda x, s, b: implementation.call(case)(x, s, b, None, epsilon=0.0)  # noqa: E731
        y = jax.jit(fn)(x, scale, bias)
        want = case.ref(x.astype(np.float64), 0 * scale, bias, None) if case.has_bias else np.zeros(x.shape)
        if not case.has_bias:  # uncentered (RMSNorm): a constant normalizes to ±1, not 0
            want = case.ref(x.astype(np.float64), scale, bias, None)
        np.testing.assert_allclose(np.asarray(y), want, atol=1e-6)
        cot = rng.standard_normal(case.shape).astype(np.float32)
        argnums = (0, 1, 2) if case.has_bias else (0, 1)
        grads = jax.jit(jax.grad(lambda x, s, b: jnp.sum(fn(x, s, b) * cot), argnums=argnums))(x, scale, bias)
        for g in grads:
            assert np.isfinite(np.asarray(g)).all()

    # -- transformations ----------------------------------------------------------------

    def test_jit_equals_eager(self, case, implementation):
        rng, x, scale, bias = _inputs(case, dtype=np.float32)
        where = jnp.asarray(rng.random(case.shape) < 0.8) if implementation.supports(case, {MASK}) else None
        call = implementation.call(case)
        eager = call(x, scale, bias, where)
        jitted = jax.jit(lambda *a: call(*a))(x, scale, bias, where)
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)

    def test_vmap_equals_loop(self, case, implementation):
        dtype = implementation.dtype
        rtol, atol = _tolerance(dtype)
        rng = np.random.default_rng(1)
        xs = rng.standard_normal((3,) + case.shape).astype(dtype)
        scale, bias = params(case, rng, dtype)
        call = implementation.call(case)
        batched = jax.vmap(lambda x: call(x, scale, bias, None))(xs)
        looped = np.stack([call(x, scale, bias, None) for x in xs])
        np.testing.assert_allclose(batched, looped, rtol=rtol, atol=atol)
        # Batching the parameters as well (e.g. one conditioning per batch element).
        scales = np.stack([scale * (i + 1) for i in range(3)])
        batched = jax.vmap(lambda x, s: call(x, s, bias, None))(xs, scales)
        looped = np.stack([call(x, s, bias, None) for x, s in zip(xs, scales)])
        np.testing.assert_allclose(batched, looped, rtol=rtol, atol=atol)

    def test_gradients_match_reference_finite_differences(self, case, implementation):
        """Reverse-mode derivatives of x, scale and bias against central differences of the float64 oracle."""
        dtype = implementation.dtype
        rng, x, scale, bias = _inputs(case, seed=3, dtype=dtype)
        cot = rng.standard_normal(case.shape).astype(dtype)
        call = implementation.call(case)
        args = (x, scale, bias) if case.has_bias else (x, scale)
        loss = lambda *a: jnp.sum(call(a[0], a[1], a[2] if case.has_bias else None, None) * cot)  # noqa: E731
        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
        ref = lambda *a: case.ref(a[0], a[1], a[2] if case.has_bias else None, None)  # noqa: E731
        numeric = _numeric_gradient(ref, [np.asarray(a, np.float64) for a in args], cot.astype(np.float64), 1e-6)
        rtol = 1e-6 if dtype == np.float64 else 1e-4
        for name, g, n in zip(("x", "scale", "bias"), grads, numeric):
            np.testing.assert_allclose(np.asarray(g, np.float64), n, rtol=rtol, atol=rtol, err_msg=name)

    @needs(FLOAT64, FORWARD_MODE, SECOND_ORDER, MASK, PER_EXAMPLE)
    @pytest.mark.parametrize("variant", ["plain", "masked", "per_example", "no_affine"])
    def test_check_grads_fwd_rev(self, case, implementation, variant):
        rng, x, scale, bias = _inputs(case, seed=2, per_example=variant == "per_example")
        where = jnp.asarray(rng.random(case.shape) < 0.75) if variant == "masked" else None
        call = implementation.call(case)
        if variant == "no_affine":
            f = lambda x: call(x, None, None, where)  # noqa: E731
            args = (x,)
        elif case.has_bias:
            f = lambda x, s, b: call(x, s, b, where)  # noqa: E731
            args = (x, scale, bias)
        else:
            f = lambda x, s: call(x, s, None, where)  # noqa: E731
            args = (x, scale)
        # Second order for the plain and masked statistics; the per-example and
        # affine-free variants share those statistics and check their own
        # (first-order) parameter derivatives.
        order = 2 if variant in ("plain", "masked") else 1
        check_grads(f, args, order=order, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)

    # -- masks ----------------------------------------------------------------------------

    @needs(FLOAT64, MASK, FORWARD_MODE)
    @pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
    def test_masked_entries_change_nothing(self, case, implementation, poison):
        call = implementation.call(case)
        rng, x, scale, bias = _inputs(case, seed=5)
        where = rng.random(case.shape) < 0.7
        where.flat[0] = True  # every case keeps at least one entry
        poisoned = np.where(where, x, poison)
        cot = rng.standard_normal(case.shape)

        def value_and_grads(x):
            f = lambda x, s: jnp.sum(call(x, s, bias, jnp.asarray(where)) * cot)  # noqa: E731
            return jax.value_and_grad(f, argnums=(0, 1))(x, scale)

        y_clean = call(x, scale, bias, where)
        y_poison = call(poisoned, scale, bias, where)
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
        _, t_clean = jax.jvp(lambda x: call(x, scale, bias, where), (x,), (tangent,))
        _, t_poison = jax.jvp(lambda x: call(x, scale, bias, where), (poisoned,), (tangent,))
        np.testing.assert_array_equal(t_clean, t_poison)
