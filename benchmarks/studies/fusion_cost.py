"""What each kernel of a LayerNorm/RMSNorm forward+backward costs on XLA, alone.

A closed-form backward (``dx = r·(g·s − E[g·s] − x̂·E[g·s·x̂])``) needs, on
any backend that gives each reduction its own kernel:

* stats: ``Σx`` and ``Σx²`` per row (RMSNorm: ``Σx²``), the forward's sums;
* row sums: ``Σ g·s`` and ``Σ g·s·x̂`` per row (RMSNorm: the second);
* the dx pass: read x and g, write dx, given the per-row sums;
* column sums: ``Σ_rows g·x̂`` (dscale) and ``Σ_rows g`` (dbias).

Each is timed as its own jitted function, on arguments (nothing
constant-folded), interleaved with jaxnorm's and flax.linen's whole
forward+backward in one process. "fused" is the row sums and the dx pass
in one function, written as jaxnorm writes it so that XLA:CPU compiles it
to one kernel (YNNPACK leaves elementwise work on fewer than 4096 elements,
such as a per-row ``/n``, out of its fusions). The kernel floor is stats +
min(fused, row sums + dx pass) + column sums: what the kernels every such
program runs cost when each runs alone, over flax.linen's whole time.

    python benchmarks/studies/fusion_cost.py [--shapes 4096x768,...] [--repeats 30] [--allocator steady] [--out PATH]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: harness/

from jaxnorm.bench.cases import batch_independent_cases
from harness.pieces import measure_rows, parse_row_args, report, time_pieces

SHAPES = ("16x32x32x256", "8x64x64x64", "4x16x16x1280", "4096x768", "2048x4096", "512x8192")


def kernels(center: bool) -> dict:
    """The pieces, as functions of ``(x, g, s, mu, r, a, b)`` on ``(rows, features)``.

    ``mu``, ``r``, ``a``, ``b`` are per-row ``(rows, 1)``: the mean, the
    reciprocal deviation and the two per-row means the dx pass subtracts.
    """
    n = lambda x: x.shape[-1]
    xhat = lambda x, mu, r: (x - mu) * r if center else x * r

    def stats(x, g, s, mu, r, a, b):
        return (jnp.sum(x, -1), jnp.sum(x * x, -1)) if center else jnp.sum(x * x, -1)

    def row_sums(x, g, s, mu, r, a, b):
        second = jnp.sum(g * s * xhat(x, mu, r), -1)
        # Σ g·s as a matrix-vector product: as a second reduction it would
        # share the broadcast of s, which XLA:CPU then stores.
        return (g @ s, second) if center else second

    def dx_pass(x, g, s, mu, r, a, b):
        inner = g * s - xhat(x, mu, r) * b
        return r * (inner - a if center else inner)

    def fused(x, g, s, mu, r, a, b):
        # r·(g·s − E[g·s] − x̂·E[g·s·x̂]) with the per-row factor k = −r/n
        # spread to full size before use, as jaxnorm writes it: an op on
        # fewer than 4096 per-row values would end XLA:CPU's fused kernel.
        gs, xh = g * s, xhat(x, mu, r)
        k = jnp.broadcast_to(-r / n(x), x.shape)
        out = r * gs + (xh * k) * jnp.sum(gs * xh, -1, keepdims=True)
        return out + k * jnp.sum(gs, -1, keepdims=True) if center else out

    def column_sums(x, g, s, mu, r, a, b):
        ds = jnp.sum(g * xhat(x, mu, r), 0)
        return (ds, jnp.sum(g, 0)) if center else ds

    return {"stats": stats, "row sums": row_sums, "dx pass": dx_pass, "fused": fused,
            "column sums": column_sums}


def full_size_kernels(jitted, args, shape) -> int:
    """How many compiled fusions of ``jitted(*args)`` have an output of ``shape``."""
    text = jitted.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY"):]
    full = f"[{','.join(map(str, shape))}]"
    return sum(1 for line in entry.splitlines() if " fusion(" in line and f"{full}{{" in line.split("=")[1][:60])


def measure(scheme: str, shape: tuple[int, ...], repeats: int) -> dict:
    """One row: each piece's median ms, jaxnorm's and flax.linen's f+b, the kernel floor."""
    center = scheme == "layer_norm"
    rows, features = math.prod(shape[:-1]), shape[-1]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, features)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((rows, features)), jnp.float32)
    s = jnp.asarray(1 + 0.1 * rng.standard_normal(features), jnp.float32)
    per_row = [jnp.asarray(v, jnp.float32) for v in rng.standard_normal((4, rows, 1))]
    mu, r, a, b = per_row[0], 1 + 0.1 * jnp.abs(per_row[1]), per_row[2], per_row[3]
    args = (x, g, s, mu, r, a, b)
    case = next(c for c in batch_independent_cases(shape) if c.scheme == scheme)
    times = time_pieces(kernels(center), args, case, x.reshape(shape), g.reshape(shape), repeats=repeats)
    separate = times["row sums"] + times["dx pass"]
    floor = times["stats"] + min(times["fused"], separate) + times["column sums"]
    return {
        "scheme": scheme, "shape": list(shape), "ms": times,
        "fused_kernels": full_size_kernels(jax.jit(kernels(center)["fused"]), args, (rows, features)),
        "fused_over_separate": times["fused"] / separate,
        "kernel_floor_ms": floor,
        "kernel_floor_ratio": floor / times["flax"],
        "ratio_fwd_bwd": times["jaxnorm"] / times["flax"],
    }


def main(argv=None) -> int:
    args = parse_row_args(argv, __doc__.splitlines()[0], shapes=",".join(SHAPES), schemes="layer_norm,rms_norm",
                          repeats=30)
    rows = measure_rows(measure, args.shapes, args.schemes, args.repeats)
    report(rows, [("fused/sep", "fused_over_separate", "{:.2f}"), ("kernels", "fused_kernels", "{}"),
                  ("floor/flax", "kernel_floor_ratio", "{:.2f}"), ("jaxnorm/flax", "ratio_fwd_bwd", "{:.2f}")],
           "ms: median under jit, each piece alone, interleaved with jaxnorm's and flax.linen's whole\n"
           "forward+backward. fused/sep: the fused function over row sums + dx pass; kernels: its\n"
           "full-size kernels once compiled (1: one fused kernel). floor: stats + min(fused, row sums\n"
           "+ dx pass) + column sums.",
           args.out, "fusion_cost.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
