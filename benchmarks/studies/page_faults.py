"""What first-touch page faults cost an elementwise pass on this machine, around glibc's 32 MiB mmap limit.

Times, under jit and interleaved, ``y = x·2`` on float32 arrays of
``rows × 4096`` for rows around 2048 (32 MiB), and counts the minor page
faults per call (:mod:`jaxnorm.bench.faults`). From 32 MiB up, glibc maps
every output afresh, so every call faults once per page. Run it with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to see what transparent huge pages
change, and with ``--allocator steady`` (:mod:`harness.allocator`:
every buffer from the heap) to see the pass without faults.

    python benchmarks/studies/page_faults.py [--repeats 40] [--allocator steady]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: harness/

from jaxnorm.bench.faults import page_faults_per_call
from jaxnorm.bench.timing import interleaved_medians
from harness.allocator import add_allocator_option, apply_allocator_option, glibc_tunables

ROWS = (512, 1024, 1900, 2047, 2048)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    add_allocator_option(parser)
    args = parser.parse_args(argv)
    apply_allocator_option(args, argv, parser)
    double = jax.jit(lambda x: x * 2.0)
    arrays = [jnp.ones((rows, 4096), jnp.float32) for rows in ROWS]
    calls = [lambda x=x: double(x) for x in arrays]
    times = interleaved_medians(calls, repeats=args.repeats)
    print(f"GLIBC_TUNABLES={glibc_tunables()}")
    print("x*2 on rows x 4096 float32: median ms, GB/s (read + write), minor page faults per call")
    for x, call, t in zip(arrays, calls, times):
        faults = page_faults_per_call(call)
        print(f"  {x.shape[0]:5d} x 4096  {x.nbytes / 2**20:5.1f} MiB  {1e3 * t:7.3f} ms  "
              f"{2 * x.nbytes / t / 1e9:5.1f} GB/s  {faults if faults is None else round(faults)} faults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
