"""What each kernel of an InstanceNorm/GroupNorm/BatchNorm forward+backward costs on XLA, alone.

The channel schemes' closed-form backward (``dx = a·g + x̂·u + v`` with
per-set or per-channel ``a``, ``u``, ``v``) needs, on a backend that gives
each reduction its own kernel:

* stats: ``Σx`` and ``Σx²`` per set (per example and channel for
  InstanceNorm, per example and group for GroupNorm, per channel for
  BatchNorm);
* sums: ``Σg`` and ``Σg·x̂`` per example and channel (per channel for
  BatchNorm): the per-set means and ``dscale``/``dbias`` all come from them;
* the dx pass: read x and g, write dx.

Each is timed as its own jitted function on arguments, interleaved with
jaxnorm's and flax.linen's whole forward+backward in one process; the
kernel floor is their sum over flax.linen's time. Unlike the ``floor``
column of ``bench_norms.py`` it includes the dx pass, so run it with
``--allocator steady``: a fresh dx buffer that page-faults would time the
allocator instead.

    python benchmarks/studies/set_kernel_cost.py [--shapes 16x32x32x256,...] [--repeats 30] [--allocator steady] [--out PATH]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: harness/

from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from harness.pieces import measure_rows, parse_row_args, report, time_pieces

SHAPES = ("16x32x32x256", "8x64x64x64", "4x16x16x1280")
SCHEMES = ("instance_norm", "group_norm", "batch_norm")
GROUPS = 32  # as bench_norms.py's GroupNorm rows


def kernels(scheme: str, shape: tuple[int, int, int, int]) -> dict:
    """The pieces, as functions of ``(x, g, mu, r, a, u, v)`` on NHWC ``x``.

    ``mu``, ``r``, ``a``, ``u``, ``v`` are per example and channel
    ``(N, 1, 1, C)`` (per channel ``(1, 1, 1, C)`` for BatchNorm): the mean,
    the reciprocal deviation and the dx pass's coefficients.
    """
    n, h, w, c = shape
    fine = (0, 1, 2) if scheme == "batch_norm" else (1, 2)

    def stats(x, g, mu, r, a, u, v):
        sums = jnp.sum(x, fine), jnp.sum(x * x, fine)
        if scheme == "group_norm":  # per example and channel, pooled: a direct sum over
            # (H, W, channels of a group) runs 10x slower with 2 channels a group
            return tuple(jnp.sum(t.reshape(n, GROUPS, c // GROUPS), -1) for t in sums)
        return sums

    def sums(x, g, mu, r, a, u, v):
        return jnp.sum(g, fine), jnp.sum(g * ((x - mu) * r), fine)

    def dx_pass(x, g, mu, r, a, u, v):
        return a * g + (x - mu) * u + v

    return {"stats": stats, "sums": sums, "dx pass": dx_pass}


def measure(scheme: str, shape: tuple[int, ...], repeats: int) -> dict:
    """One row: each piece's median ms, jaxnorm's and flax.linen's f+b, the kernel floor."""
    rng = np.random.default_rng(0)
    x, g = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    per_set = (1 if scheme == "batch_norm" else shape[0], 1, 1, shape[-1])
    mu, r, a, u, v = (jnp.asarray(rng.standard_normal(per_set), jnp.float32) for _ in range(5))
    args = (x, g, mu, 1 + 0.1 * jnp.abs(r), a, u, v)
    case = next(c for c in batch_independent_cases(shape) + batch_cases(shape) if c.scheme == scheme)
    times = time_pieces(kernels(scheme, shape), args, case, x, g, repeats=repeats)
    floor = times["stats"] + times["sums"] + times["dx pass"]
    return {
        "scheme": scheme, "shape": list(shape), "ms": times, "kernel_floor_ms": floor,
        "kernel_floor_ratio": floor / times["flax"], "ratio_fwd_bwd": times["jaxnorm"] / times["flax"],
    }


def main(argv=None) -> int:
    args = parse_row_args(argv, __doc__.splitlines()[0], shapes=",".join(SHAPES), schemes=",".join(SCHEMES),
                          repeats=30)
    rows = measure_rows(measure, args.shapes, args.schemes, args.repeats)
    report(rows, [("floor/flax", "kernel_floor_ratio", "{:.2f}"), ("jaxnorm/flax", "ratio_fwd_bwd", "{:.2f}")],
           "ms: median under jit, each piece alone, interleaved with jaxnorm's and flax.linen's whole\n"
           "forward+backward. floor: stats + sums + dx pass.",
           args.out, "set_kernel_cost.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
