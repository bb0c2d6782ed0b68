"""``python -m jaxnorm``: check every scheme against float64 and time it next to Flax.

Uses: jaxnorm.bench (cases, run, table).
"""

from __future__ import annotations

import argparse
import sys

import jax

from jaxnorm.bench.cases import DEFAULT_SHAPE, default_cases
from jaxnorm.bench.run import flax_available, run_cases
from jaxnorm.bench.table import LEGEND, format_table, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxnorm",
        description="Check each jaxnorm scheme against a float64 reference and time it "
        "(forward, forward+backward, under jit) next to flax.linen's equivalent.",
    )
    parser.add_argument("--shape", default="x".join(map(str, DEFAULT_SHAPE)),
                        help="input shape N x spatial... x C (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    print(f"jaxnorm on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"input {args.shape} float32", flush=True)
    if not flax_available():
        print("flax is not installed: no comparison columns (pip install 'jaxnorm[flax]')")
    rows = run_cases(default_cases(shape), repeats=args.repeats, progress=not args.no_progress)
    print(format_table(rows))
    print(LEGEND)
    if args.json:
        write_json(args.json, rows, command="python -m jaxnorm " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
