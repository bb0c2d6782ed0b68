"""What one more small kernel costs a jitted program on this backend.

Times, under jit and interleaved, chains of dependent operations on a
small ``4 × 1280`` float32 array (alternating ``sin`` and ``cumsum``, which
XLA cannot fuse into one kernel), counts the kernels in each compiled
chain (:mod:`jaxnorm.bench.hlo_traffic`), and prints the cost per added
kernel: the price of each small kernel a normalization's forward adds
(jaxnorm's conditioning test and ``lax.cond``) where the whole forward
takes a fraction of a millisecond.

    python benchmarks/studies/kernel_overhead.py [--repeats 200]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxnorm.bench.hlo_traffic import kernel_traffic
from jaxnorm.bench.timing import interleaved_medians

STEPS = (1, 5, 9)


def chain(steps: int):
    def run(a):
        for i in range(steps):
            a = jnp.sin(a) if i % 2 else jnp.cumsum(a, axis=1)
        return a

    return jax.jit(run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    a = jnp.ones((4, 1280), jnp.float32)
    fns = [chain(n) for n in STEPS]
    kernels = [len(kernel_traffic(f.lower(a).compile().as_text(), 1)) for f in fns]
    times = interleaved_medians([lambda f=f: f(a) for f in fns], repeats=args.repeats)
    print(f"{jax.default_backend()}: chains of small dependent ops on a 4x1280 float32 array")
    for n, k, t in zip(STEPS, kernels, times):
        print(f"  {n} ops: {k:3d} kernels  {1e3 * t:.3f} ms")
    per_kernel = (times[-1] - times[0]) / (kernels[-1] - kernels[0])
    print(f"per added kernel: {1e6 * per_kernel:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
