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
