"""GroupNorm against the operation contract (tests/operation_contract.py), under every implementation."""

from norm_cases import CASES
from operation_contract import OperationContract


class TestGroupNorm(OperationContract):
    cases = [c for c in CASES if c.op == "group_norm"]


def test_fully_masked_set_gives_zeros():
    import numpy as np

    import jaxnorm as jn

    x = np.random.default_rng(6).standard_normal((2, 4, 6))
    where = np.ones(x.shape, bool)
    where[0] = False  # example 0 entirely masked
    y = jn.group_norm(x, np.ones(6), np.ones(6), num_groups=2, where=where)
    np.testing.assert_array_equal(np.asarray(y)[0], 0)
    assert np.isfinite(np.asarray(y)).all()
