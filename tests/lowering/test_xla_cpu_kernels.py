"""The forward pass alone: flax.linen's kernels plus the conditioning test, exact in both branches (issue 7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from jaxnorm.bench.hlo_traffic import kernel_traffic
from jaxnorm.bench.run import _flax_apply

SHAPE = (4, 8, 8, 256)


def _case(scheme):
    return next(c for c in batch_independent_cases(SHAPE) + batch_cases(SHAPE) if c.scheme == scheme)


def _kernels(apply, case):
    x = jnp.ones(SHAPE, jnp.float32)
    s, b = jnp.ones(case.param_shape, jnp.float32), jnp.zeros(case.param_shape, jnp.float32)
    return [name for name, *_ in kernel_traffic(jax.jit(apply).lower(x, s, b).compile().as_text(), 0)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernel structure")
@pytest.mark.parametrize("scheme, extra", [
    ("layer_norm", 1), ("instance_norm", 3), ("batch_norm", 3), ("group_norm", None),
])
def test_forward_adds_only_the_conditioning_test_to_flax_kernels(scheme, extra):
    """Before: 12 kernels for LayerNorm (flax.linen: 4), 5 of them layout copies of statistics."""
    case = _case(scheme)
    ours, flax = _kernels(case.apply, case), _kernels(_flax_apply(case), case)
    assert not [k for k in ours if "copy" in k], ours
    if extra is not None:  # the well-conditioned branch, and the test choosing it
        assert len(ours) <= len(flax) + extra, (ours, flax)


@pytest.mark.parametrize("scheme", ["layer_norm", "instance_norm", "batch_norm", "group_norm"])
@pytest.mark.parametrize("mean", [0.0, 1e4])
def test_forward_matches_float64_in_either_branch(scheme, mean):
    case = _case(scheme)
    rng = np.random.default_rng(3)
    x = (mean + rng.standard_normal(SHAPE)).astype(np.float32)
    s = (1 + 0.1 * rng.standard_normal(case.param_shape)).astype(np.float32)
    b = (0.1 * rng.standard_normal(case.param_shape)).astype(np.float32)
    got = np.asarray(jax.jit(case.apply)(x, s, b), np.float64)
    want = case.reference(*(a.astype(np.float64) for a in (x, s, b)))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 3e-7


@pytest.mark.parametrize("far_row", [False, True])
def test_a_nan_set_leaves_the_other_sets_exact(far_row):
    """The test is a max over the sets: a NaN set gets NaN, the others their exact values,
    whether the rest are well conditioned or one of them lies far from zero."""
    import jaxnorm

    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    x[2, 5] = np.nan
    if far_row:
        x[4] += 1e4
    y = np.asarray(jax.jit(jaxnorm.layer_norm)(x), np.float64)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    assert np.isnan(y[2]).all()
    rows = [0, 1, 3, 4, 5]
    assert np.abs(y[rows] - want[rows]).max() < 1e-5
