"""The floor program (jaxnorm.bench.floor): the right sums, nothing full-size written, and a row column."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from jaxnorm.bench.floor import FLOOR_SCHEMES, floor_program
from jaxnorm.bench.hlo_traffic import compiled_traffic
from jaxnorm.bench.run import run_case

SHAPE = (4, 3, 5, 8)


def _expected(scheme, x, g):
    """Each scheme's unavoidable sums, in float64 NumPy."""
    rows = lambda t: t.sum((0, 1, 2))
    if scheme == "rms_norm":
        return [(x * x).sum(-1), rows(g * x)]
    if scheme == "layer_norm":
        return [x.sum(-1), (x * x).sum(-1), rows(g), rows(g * x)]
    # BatchNorm per channel; InstanceNorm and GroupNorm per example and channel.
    sets = rows if scheme == "batch_norm" else (lambda t: t.sum((1, 2)))
    return [sets(t) for t in (x, x * x, g, g * x)]


@pytest.mark.parametrize("scheme", FLOOR_SCHEMES)
def test_floor_computes_each_scheme_s_unavoidable_sums(scheme):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    out = floor_program(scheme, SHAPE)(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
    expected = _expected(scheme, x, g)
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", FLOOR_SCHEMES)
def test_floor_reads_x_and_g_as_its_reductions_must_and_writes_nothing_full_size(scheme):
    # Σx, Σx², Σg read one array each, Σg·x two (RMSNorm: Σx², Σg·x).
    x = jnp.ones((8, 16, 16, 64))
    moved = compiled_traffic(floor_program(scheme, x.shape), x, x, like=x)
    assert moved == (3 if scheme == "rms_norm" else 5)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="floor_program: no floor for scheme 'lrn'"):
        floor_program("lrn", SHAPE)


def test_run_case_reports_the_floor_next_to_flax():
    cases = batch_independent_cases((2, 8, 8, 16), num_groups=4) + batch_cases((2, 8, 8, 16))
    case = next(c for c in cases if c.scheme == "batch_norm")
    row = run_case(case, repeats=3, floor=True)
    assert row["floor_fwd_bwd_ms"] > 0
    assert row["floor_ratio_fwd_bwd"] == pytest.approx(row["floor_fwd_bwd_ms"] / row["flax_fwd_bwd_ms"])
    assert "floor_fwd_bwd_ms" not in run_case(case, repeats=2)
    assert all(c.floor is not None for c in cases if c.flax_module is not None)
