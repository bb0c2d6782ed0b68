"""Time jaxnorm against flax.linen, forward and forward+backward, under jit.

For each shape and scheme: median milliseconds of jaxnorm and of the
equivalent flax.linen module (flax's defaults, same epsilon) on the same
inputs, interleaved in one process, and the ratio jaxnorm/flax. Also checks
each against the float64 reference. Writes JSON with the machine and versions.

    python benchmarks/bench_norms.py [--repeats 50] [--out benchmarks/results/norms_cpu.json]
"""

from __future__ import annotations

import argparse
import sys

from jaxnorm.bench import default_cases, run_cases
from jaxnorm.bench.table import LEGEND, format_table, write_json

# CNN activations (N, H, W, C) for every scheme; transformer activations
# (tokens, hidden) for LayerNorm and RMSNorm.
CNN_SHAPES = [(16, 32, 32, 256), (8, 64, 64, 64), (4, 16, 16, 1024)]
TOKEN_SHAPES = [(4096, 1024), (1024, 4096)]


def cases():
    out = []
    for shape in CNN_SHAPES:
        out += default_cases(shape)
    for shape in TOKEN_SHAPES:
        out += [c for c in default_cases(shape) if c.scheme in ("layer_norm", "rms_norm")]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/norms_cpu.json")
    args = parser.parse_args(argv)
    rows = run_cases(cases(), repeats=args.repeats)
    for row in rows:
        row["scheme"] = f"{row['scheme']} {'x'.join(map(str, row['shape']))}"
    print(format_table(rows))
    print(LEGEND)
    write_json(args.out, rows, command="python benchmarks/bench_norms.py " + " ".join(sys.argv[1:]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
