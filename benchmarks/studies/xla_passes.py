"""Where a jitted forward+backward spends its time on XLA:CPU: one line per fused kernel.

Profiles (``jax.profiler``) jaxnorm's and flax.linen's forward+backward of
one scheme and lists each compiled fusion with its time, output shape and
whether its output is full-size (a stored intermediate or the result), then
the kernels that read or write full-size arrays and how many bytes (from the
compiled HLO: :mod:`jaxnorm.bench.hlo_traffic`). On 2 cores XLA runs
independent kernels at once, so the times overlap; the bytes do not.

    python benchmarks/studies/xla_passes.py [--scheme instance_norm] [--shape 16x32x32x256] [--forward]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from jaxnorm.bench.hlo_traffic import kernel_traffic
from jaxnorm.bench.run import _flax_apply


def fusion_shapes(jitted, args) -> dict[str, str]:
    """Each fusion's name in the compiled module -> its output shape."""
    text = jitted.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY"):]
    return dict(re.findall(r"%([\w.\-]+) = (\S+\[[\d,]*\])\S* fusion\(", entry))


def thunk_times(jitted, args, reps: int) -> dict[str, float]:
    """Median-free mean ms per call of each thunk, from a profiler trace."""
    for _ in range(3):
        jax.block_until_ready(jitted(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(reps):
                jax.block_until_ready(jitted(*args))
        (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e["dur"] / 1e3 / reps
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="instance_norm")
    parser.add_argument("--shape", default="16x32x32x256")
    parser.add_argument("--forward", action="store_true", help="forward only")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    case = next(c for c in batch_independent_cases(shape) + batch_cases(shape) if c.scheme == args.scheme)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    s, b = jnp.ones(case.param_shape), jnp.zeros(case.param_shape)
    cot = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    for name, apply in (("jaxnorm", case.apply), ("flax.linen", _flax_apply(case))):
        if args.forward:
            jitted, fargs = jax.jit(apply), (x, s, b)
        else:
            loss = lambda x, s, b, c, f=apply: jnp.sum(f(x, s, b) * c)
            jitted, fargs = jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (x, s, b, cot)
        shapes = fusion_shapes(jitted, fargs)
        times = thunk_times(jitted, fargs, args.reps)
        full = f"[{','.join(map(str, shape))}]"
        rows = sorted(((times.get(k, 0.0), k, v) for k, v in shapes.items()), reverse=True)
        n_full = sum(v.endswith(full) for _, _, v in rows)
        print(f"{name}: {len(rows)} fusions, {n_full} with a full-size output")
        for t, k, v in rows:
            if t >= 0.05:
                print(f"  {t:7.2f} ms  {k:32s} {v}{'  (full size)' if v.endswith(full) else ''}")
        # The same program's kernels by the full-size bytes they move (no timing).
        text = jitted.lower(*fargs).compile().as_text()
        kernels = [k for k in kernel_traffic(text, x.nbytes // 8) if k[2] or k[3]]
        moved = sum(r + w for _, _, r, w in kernels) / x.nbytes
        print(f"  kernels that move full-size arrays (reads + writes, in x's bytes): {moved:.0f}x in all")
        for k, v, r, w in kernels:
            print(f"    {k:36s} reads {r / x.nbytes:.0f}x  writes {w / x.nbytes:.0f}x  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
