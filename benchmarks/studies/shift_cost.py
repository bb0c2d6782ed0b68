"""What a statistics pass costs on this backend: a reduction with and without a shift, and its kind.

Times, under jit and interleaved, the per-channel sum of ``x`` (what
flax.linen reduces) against the sum of ``x − s`` with ``s`` a per-channel
sample (what jaxnorm reduces so that it stays exact at large means). Also
times both moments asked for in one program, against the two alone: whether
the backend fuses two reductions of one array into one pass (the bytes its
kernels move, from :mod:`jaxnorm.bench.hlo_traffic`, say whether it did).
For scale, the same array's per-example-and-channel sum (over the axes
between the first and the last: InstanceNorm's sets), its per-row sum (over
channels, the minor axis) and an elementwise pass ``x·a + b``, which reads
``x`` and writes as much.

    python benchmarks/studies/shift_cost.py [--shape 8x64x64x64] [--repeats 80]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.bench.hlo_traffic import compiled_traffic
from jaxnorm.bench.timing import interleaved_medians


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8x64x64x64")
    parser.add_argument("--repeats", type=int, default=80)
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    shift = x[(0,) * (x.ndim - 1)]
    axes = tuple(range(x.ndim - 1))
    fns = {
        "sum(x)": (jax.jit(lambda x: jnp.sum(x, axes)), (x,)),
        "sum(x*x)": (jax.jit(lambda x: jnp.sum(x * x, axes)), (x,)),
        "sum(x - s)": (jax.jit(lambda x, s: jnp.sum(x - s, axes)), (x, shift)),
        "sum((x - s)**2)": (jax.jit(lambda x, s: jnp.sum(jnp.square(x - s), axes)), (x, shift)),
        "both, one program": (jax.jit(lambda x: (jnp.sum(x, axes), jnp.sum(x * x, axes))), (x,)),
        "(n, c) sum(x)": (jax.jit(lambda x: jnp.sum(x, tuple(range(1, x.ndim - 1)))), (x,)),
        "row sum(x)": (jax.jit(lambda x: jnp.sum(x, -1)), (x,)),
        "x*a + b": (jax.jit(lambda x: x * 1.5 + 0.5), (x,)),
    }
    times = interleaved_medians([lambda f=f, a=a: f(*a) for f, a in fns.values()], repeats=args.repeats)
    base = dict(zip(fns, times))
    print(f"{jax.default_backend()}, x {args.shape} float32, per-channel sums, median ms "
          f"(GB/s of x read):")
    for name, t in base.items():
        print(f"  {name:17s} {1e3 * t:.3f}  ({x.nbytes / t / 1e9:.0f})")
    print(f"shifted/plain: {base['sum(x - s)'] / base['sum(x)']:.2f} (first moment), "
          f"{base['sum((x - s)**2)'] / base['sum(x*x)']:.2f} (second)")
    both, (f, a) = base["both, one program"], fns["both, one program"]
    print(f"sum(x) and sum(x*x) in one program / the two alone: "
          f"{both / (base['sum(x)'] + base['sum(x*x)']):.2f}; "
          f"its kernels read {compiled_traffic(f, *a, like=x):.0f}x the input")
    for name in ("sum(x)", "(n, c) sum(x)"):
        print(f"{name} / row sum(x): {base[name] / base['row sum(x)']:.2f}; "
              f"/ elementwise pass (reads and writes x): {base[name] / base['x*a + b']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
