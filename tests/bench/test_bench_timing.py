"""The harness's timing: interleaved rounds and paired per-round ratios (jaxnorm.bench.timing)."""

import pytest

from jaxnorm.bench.cases import batch_independent_cases
from jaxnorm.bench.run import run_case
from jaxnorm.bench.timing import interleaved_medians, interleaved_samples, paired_ratio


def test_rounds_alternate_order_and_every_call_is_timed():
    calls = []
    fns = [lambda: calls.append("a") or 0, lambda: calls.append("b") or 0]
    samples = interleaved_samples(fns, repeats=4, warmup=1)
    assert [len(s) for s in samples] == [4, 4]
    # warm-up round, then forward and reverse order in turn
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"
    assert len(interleaved_medians(fns, repeats=3, warmup=0)) == 2


def test_paired_ratio_takes_ratios_within_rounds():
    # Round i is slow for both (x10): paired ratios stay 0.5, while a ratio
    # of the two medians would not see the pairing.
    a = [1.0, 10.0, 1.0, 10.0, 1.0]
    b = [2.0, 20.0, 2.0, 20.0, 2.0]
    assert paired_ratio(a, b) == pytest.approx((0.5, 0.5, 0.5))
    q25, q50, q75 = paired_ratio([1, 2, 3, 4, 5], [1, 1, 1, 1, 1])
    assert (q25, q50, q75) == pytest.approx((2, 3, 4))
    with pytest.raises(ValueError):
        paired_ratio([1, 2], [1])


def test_run_case_reports_paired_ratios_with_their_spread():
    case = next(c for c in batch_independent_cases((2, 8, 8, 16)) if c.scheme == "layer_norm")
    row = run_case(case, repeats=5)
    for kind in ("fwd", "fwd_bwd"):
        q25, q75 = row[f"paired_ratio_{kind}_iqr"]
        assert 0 < q25 <= row[f"paired_ratio_{kind}"] <= q75


def _bench_norms():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "bench_norms.py"
    spec = importlib.util.spec_from_file_location("bench_norms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_target_summary_counts_residuals_over_every_scheme():
    rows = [
        {"scheme": "layer_norm 4x4", "ratio_fwd": 0.9, "ratio_fwd_bwd": 1.2, "jaxnorm_residuals_x": 1.0},
        {"scheme": "evonorm_s0 4x4", "jaxnorm_residuals_x": 1.5},
    ]
    lines = _bench_norms().target_summary(rows)
    assert any(l.startswith("ratio_fwd_bwd <= 1.1: 0/1 rows") for l in lines), lines
    assert any(l.startswith("ratio_fwd <= 1.1: 1/1 rows") for l in lines), lines
    assert any(l.startswith("jaxnorm_residuals_x <= 1.1: 1/2 rows (all schemes); worst 1.50 (evonorm_s0")
               for l in lines), lines


def test_target_summary_counts_rows_meeting_the_pass_goals():
    rows = [
        {"scheme": "layer_norm 4x4", "ratio_fwd": 1.0, "jaxnorm_passes_fwd": 2, "flax_passes_fwd": 2,
         "jaxnorm_passes_fwd_bwd": 2, "flax_passes_fwd_bwd": 3},
        {"scheme": "rms_norm 4x4", "ratio_fwd": 1.0, "jaxnorm_passes_fwd": 3, "flax_passes_fwd": 2,
         "jaxnorm_passes_fwd_bwd": 3, "flax_passes_fwd_bwd": 2},
    ]
    last = _bench_norms().target_summary(rows)[-1]
    assert last == ("passes (accelerator program): forward equal to flax.linen's on 1/2 rows, "
                    "forward+backward no more on 1/2"), last


def test_passes_row_counts_the_accelerator_program_and_flax():
    """The accelerator program reads x once for its statistics: flax.linen's forward passes (2),
    and forward+backward no more than flax's; the CPU program's data-dependent switch is not counted."""
    from jaxnorm.bench.cases import default_cases
    from jaxnorm.bench.run import _flax_apply, passes_row

    for case in default_cases((4, 8, 8, 32), num_groups=4):
        if case.flax_module is None:
            continue
        row = passes_row(case, {"jaxnorm": case.apply, "flax": _flax_apply(case)})
        assert row["jaxnorm_passes_fwd"] == row["flax_passes_fwd"] == 2, (case.scheme, row)
        assert row["jaxnorm_passes_fwd_bwd"] <= row["flax_passes_fwd_bwd"], (case.scheme, row)
        assert row["jaxnorm_passes_flags"] == [], (case.scheme, row)


def test_hlo_traffic_counts_full_size_reads_and_writes():
    import jax
    import jax.numpy as jnp

    from jaxnorm.bench.hlo_traffic import compiled_traffic

    x = jnp.ones((64, 256), jnp.float32)
    # one elementwise pass: read x, write y
    assert compiled_traffic(jax.jit(lambda x: x * 2 + 1), x, like=x) == pytest.approx(2)
    # a reduction reads x and writes a small result
    assert compiled_traffic(jax.jit(lambda x: jnp.sum(x, 0)), x, like=x) == pytest.approx(1)
    # a sort needs its operand stored: more than one pass
    assert compiled_traffic(jax.jit(lambda x: jnp.sort(x * 2, axis=0)[0]), x, like=x) >= 3


def test_hlo_traffic_counts_only_the_slice_a_fused_kernel_takes_of_an_operand():
    import jax
    import jax.numpy as jnp

    from jaxnorm.bench.hlo_traffic import compiled_traffic, kernel_traffic

    x = jnp.ones((64, 256), jnp.float32)
    s = jnp.ones((64, 1), jnp.float32)
    # A small kernel combining a per-row statistic with a sample of x (its
    # first column) reads 64 floats of x, not all of it.
    f = jax.jit(lambda x, s: jnp.exp(s) * x[:, :1] + 1)
    text = f.lower(x, s).compile().as_text()
    assert " slice(" in text  # the sample is taken inside a fused kernel
    assert compiled_traffic(f, x, s, like=x) == 0
    assert sum(r for _, _, r, _ in kernel_traffic(text, 1)) < x.nbytes // 8
    # Overlapping slices of one operand count it once: a window sum over a
    # padded x pads (read x, write the pad) and sums (read the pad and x,
    # write): 5x, not the 9x of five whole reads of the pad.
    window = jax.jit(lambda x: sum(jnp.pad(x, ((0, 0), (2, 2)))[:, j:j + 256] for j in range(5)))
    assert compiled_traffic(window, x, like=x) == pytest.approx(5, rel=0.02)


def test_hlo_traffic_counts_the_cheapest_branch_of_a_conditional():
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxnorm.bench.hlo_traffic import compiled_traffic

    x = jnp.ones((64, 256), jnp.float32)

    def f(x, p):
        # one branch sums x, the other sorts it first (stores a copy)
        return lax.cond(p > 0, lambda: jnp.sum(x, 0), lambda: jnp.sum(jnp.sort(x, 0), 0))

    moved = compiled_traffic(jax.jit(f), x, jnp.float32(1), like=x)
    assert moved == pytest.approx(1)


def test_kernel_traffic_lists_what_hlo_traffic_sums():
    import jax
    import jax.numpy as jnp

    from jaxnorm.bench.hlo_traffic import hlo_traffic, kernel_traffic

    x = jnp.ones((64, 256), jnp.float32)
    text = jax.jit(lambda x: jnp.sum(x * 2, 0) + jnp.sum(x * x, 0)).lower(x).compile().as_text()
    kernels = kernel_traffic(text, x.nbytes // 8)
    assert sum(r + w for _, _, r, w in kernels) == hlo_traffic(text, x.nbytes // 8)
    assert all(w == 0 for _, _, _, w in kernels)  # reductions write small results
    assert sum(r for _, _, r, _ in kernels) >= x.nbytes
