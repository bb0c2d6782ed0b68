"""Timing a program's kernels one by one, next to the whole programs they belong to."""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from harness.allocator import add_allocator_option, apply_allocator_option
from jaxnorm.bench.run import _flax_apply
from jaxnorm.bench.table import format_table, write_json
from jaxnorm.bench.timing import interleaved_medians

__all__ = ["measure_rows", "parse_row_args", "pieces_table", "report", "time_pieces"]


def time_pieces(pieces: dict, args: tuple, case, x, cot, *, repeats: int) -> dict[str, float]:
    """Median ms of each piece and of jaxnorm's and flax.linen's whole forward+backward, interleaved.

    Args:
      pieces: name -> function of ``*args`` (jitted here).
      args: the pieces' arguments.
      case: a :class:`jaxnorm.bench.cases.Case` with a flax.linen twin; its
        forward+backward is the gradient of ``sum(f(x, 1, 0)·cot)`` with
        respect to x, scale and bias.
      x, cot: the whole programs' input and cotangent.
      repeats: timed rounds.

    Returns:
      ``{piece name: ms, ..., "jaxnorm": ms, "flax": ms}``.
    """
    scale, bias = jnp.ones(case.param_shape), jnp.zeros(case.param_shape)
    calls = {name: (lambda f=jax.jit(f): f(*args)) for name, f in pieces.items()}
    for name, apply in (("jaxnorm", case.apply), ("flax", _flax_apply(case))):
        loss = lambda x, s, b, c, f=apply: jnp.sum(f(x, s, b) * c)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        calls[name] = lambda grad=grad: grad(x, scale, bias, cot)
    times = interleaved_medians(list(calls.values()), repeats=repeats)
    return {name: 1e3 * t for name, t in zip(calls, times)}


def measure_rows(measure, shapes: str, schemes: str, repeats: int) -> list[dict]:
    """``measure(scheme, shape, repeats)`` for every comma-separated shape (``16x32x32x256``) and scheme."""
    rows = []
    for shape in shapes.split(","):
        dims = tuple(int(d) for d in shape.split("x"))
        rows += [measure(scheme, dims, repeats) for scheme in schemes.split(",")]
    return rows


def pieces_table(rows: list[dict], extra_columns) -> str:
    """:func:`jaxnorm.bench.table.format_table` of rows holding ``"ms"`` (from :func:`time_pieces`).

    One column per timed piece, then ``extra_columns`` (``(header, key, format)``).
    """
    names = list(rows[0]["ms"]) if rows else []
    shown = [{"row": f"{r['scheme']} {'x'.join(map(str, r['shape']))}", **{f"ms {n}": t for n, t in r["ms"].items()},
              **r} for r in rows]
    columns = [("scheme, shape", "row", "{}")] + [(n, f"ms {n}", "{:.3f}") for n in names] + list(extra_columns)
    return format_table(shown, columns)


def report(rows: list[dict], extra_columns, legend: str, out: str | None, script: str) -> None:
    """Print :func:`pieces_table` and ``legend``; with ``out``, also write the rows there as JSON.

    The JSON's ``command`` is ``python benchmarks/{script}`` with this process's arguments.
    """
    print(pieces_table(rows, extra_columns))
    print(legend)
    if out:
        write_json(out, rows, command=f"python benchmarks/{script} " + " ".join(sys.argv[1:]))


def parse_row_args(argv, description: str, *, shapes: str, schemes: str, repeats: int,
                   schemes_help: str | None = None) -> argparse.Namespace:
    """The options every per-row cost script takes: ``--shapes``, ``--schemes``, ``--repeats``,
    ``--allocator`` (applied here: ``steady`` re-executes the script) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shapes", default=shapes)
    parser.add_argument("--schemes", default=schemes, help=schemes_help)
    parser.add_argument("--repeats", type=int, default=repeats)
    add_allocator_option(parser)
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    apply_allocator_option(args, argv, parser)
    return args
