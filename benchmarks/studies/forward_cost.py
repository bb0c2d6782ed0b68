"""What jaxnorm's forward pass costs beyond flax.linen's kernels: the conditioning test.

jaxnorm's forward (LayerNorm, GroupNorm, InstanceNorm, BatchNorm) sums ``x``
and ``x²`` per set, as flax.linen does, tests whether every set is well
conditioned (``mean² <= 4·var``), and under ``lax.cond`` computes its
output from those sums or from the exact shifted moments
(:func:`jaxnorm._lowering.xla_cpu.on_conditioning`, the CPU program). This script compiles, per row,
flax.linen's forward, jaxnorm's, and jaxnorm's with the test taken out
(the well-conditioned branch alone, which is what runs on these inputs:
measurement only, by swapping ``on_conditioning`` while compiling), counts
each program's kernels, and times the three interleaved. ``untested/flax``
says whether jaxnorm's kernels match flax.linen's; ``test ms``, what the
test and the ``lax.cond`` add. RMSNorm has no test (its statistic needs no
centring) and is listed for its kernel count.

    python benchmarks/studies/forward_cost.py [--shapes 16x32x32x256,...] [--schemes ...] [--repeats 100] [--allocator steady] [--out PATH]
"""

from __future__ import annotations

import contextlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: harness/

import jaxnorm._lowering.xla_cpu
from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from jaxnorm.bench.hlo_traffic import kernel_traffic
from jaxnorm.bench.run import _flax_apply
from jaxnorm.bench.timing import interleaved_samples, paired_ratio
from harness.pieces import measure_rows, parse_row_args, report

SHAPES = ("16x32x32x256", "8x64x64x64", "4x16x16x1280", "4096x768", "2048x4096", "512x8192")
SCHEMES = "layer_norm,rms_norm,group_norm,instance_norm,batch_norm"
ROW_SCHEMES = ("layer_norm", "rms_norm")  # the schemes timed on tokens×hidden shapes


@contextlib.contextmanager
def without_conditioning_test():
    """Forward passes traced inside take the well-conditioned branch unconditionally (measurement only)."""
    def textbook_only(x, reduction, count, textbook, shifted):
        total, keep = jaxnorm._lowering.xla_cpu._flat_sums(reduction, x.shape)
        safe_count = jnp.maximum(count, 1)
        mean = total(x) / safe_count
        var = total(x * x) / safe_count - mean * mean
        return textbook(keep(mean), keep(var))

    original = jaxnorm._lowering.xla_cpu.on_conditioning
    jaxnorm._lowering.xla_cpu.on_conditioning = textbook_only
    jax.clear_caches()  # traces of the normalization are cached by function
    try:
        yield
    finally:
        jaxnorm._lowering.xla_cpu.on_conditioning = original
        jax.clear_caches()


def measure(scheme: str, shape: tuple[int, ...], repeats: int) -> dict:
    """One row: median ms and kernel count of flax.linen's, jaxnorm's and the untested forward."""
    case = next(c for c in batch_independent_cases(shape) + batch_cases(shape) if c.scheme == scheme)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    s = jnp.asarray(1 + 0.1 * rng.standard_normal(case.param_shape), jnp.float32)
    b = jnp.asarray(0.1 * rng.standard_normal(case.param_shape), jnp.float32)
    args = (x, s, b)

    def compiled(apply):
        return jax.jit(apply).lower(*args).compile()

    programs = {"flax": compiled(_flax_apply(case)), "jaxnorm": compiled(case.apply)}
    with without_conditioning_test():
        programs["untested"] = compiled(lambda x, s, b: case.apply(x, s, b))
    kernels = {k: len(kernel_traffic(p.as_text(), 0)) for k, p in programs.items()}
    samples = dict(zip(programs, interleaved_samples([lambda p=p: p(*args) for p in programs.values()],
                                                     repeats=repeats, warmup=3)))
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    return {
        "scheme": scheme, "shape": list(shape), "ms": ms, "kernels": kernels,
        "kernel_counts": "{flax}/{jaxnorm}/{untested}".format(**kernels),
        "ratio_fwd": paired_ratio(samples["jaxnorm"], samples["flax"])[1],
        "untested_over_flax": paired_ratio(samples["untested"], samples["flax"])[1],
        "test_ms": ms["jaxnorm"] - ms["untested"],
    }


def main(argv=None) -> int:
    args = parse_row_args(argv, __doc__.splitlines()[0], shapes=",".join(SHAPES), schemes=SCHEMES, repeats=100,
                          schemes_help="comma-separated; tokens×hidden shapes take LayerNorm and RMSNorm only")
    rows = []
    for shape in args.shapes.split(","):
        picked = [s for s in args.schemes.split(",") if shape.count("x") == 3 or s in ROW_SCHEMES]
        if picked:
            rows += measure_rows(measure, shape, ",".join(picked), args.repeats)
    report(rows, [("kernels f/j/u", "kernel_counts", "{}"), ("jaxnorm/flax", "ratio_fwd", "{:.2f}"),
                  ("untested/flax", "untested_over_flax", "{:.2f}"), ("test ms", "test_ms", "{:+.3f}")],
           "ms: forward under jit, medians of interleaved calls; ratios: medians of per-round ratios.\n"
           "untested: jaxnorm with the conditioning test taken out (the well-conditioned branch,\n"
           "the one these zero-mean inputs take). kernels: flax.linen / jaxnorm / untested, from\n"
           "XLA's optimized HLO (jaxnorm's counts the branch that runs). test ms: jaxnorm - untested.",
           args.out, "forward_cost.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
