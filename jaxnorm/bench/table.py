"""Rendering result rows as a text table and as JSON.

Uses: jaxnorm.bench (machine).
"""

from __future__ import annotations

import json

from jaxnorm.bench.machine import machine_info

__all__ = ["SPEED_COLUMNS", "SPEED_LEGEND", "format_table", "write_json"]

# (header, row key, format)
_COLUMNS = [
    ("scheme", "scheme", "{}"),
    ("impl", "implementation", "{}"),
    ("max err", "jaxnorm_max_abs_error", "{:.1e}"),
    ("err@1e4", "jaxnorm_rel_error_mean_1e4", "{:.1e}"),
    ("fwd ms", "jaxnorm_fwd_ms", "{:.2f}"),
    ("f+b ms", "jaxnorm_fwd_bwd_ms", "{:.2f}"),
    ("flax err@1e4", "flax_rel_error_mean_1e4", "{:.1e}"),
    ("flax fwd", "flax_fwd_ms", "{:.2f}"),
    ("flax f+b", "flax_fwd_bwd_ms", "{:.2f}"),
    ("fwd ratio", "ratio_fwd", "{:.2f}"),
    ("f+b ratio", "ratio_fwd_bwd", "{:.2f}"),
]

LEGEND = (
    "max err: max |jaxnorm - float64 reference| on N(0,1) input; err@1e4: relative L2\n"
    "error at mean 1e4 (float32 input); times: median ms under jax.jit, f+b = forward +\n"
    "backward (grads of x, scale, bias); ratio = jaxnorm / flax.linen (< 1: jaxnorm faster).\n"
    "weight_norm, spectral_norm, weight_standardize act on a 3x3xCxC kernel, not on x."
)


# The speed-and-memory harness (benchmarks/bench_norms.py).
SPEED_COLUMNS = [
    ("scheme", "scheme", "{}"),
    ("impl", "implementation", "{}"),
    ("err@1e4", "jaxnorm_rel_error_mean_1e4", "{:.0e}"),
    ("fwd ms", "jaxnorm_fwd_ms", "{:.2f}"),
    ("flax", "flax_fwd_ms", "{:.2f}"),
    ("ratio", "ratio_fwd", "{:.2f}"),
    ("iqr", "paired_ratio_fwd_iqr", "{0[0]:.2f}-{0[1]:.2f}"),
    ("f+b ms", "jaxnorm_fwd_bwd_ms", "{:.2f}"),
    ("flax", "flax_fwd_bwd_ms", "{:.2f}"),
    ("ratio", "ratio_fwd_bwd", "{:.2f}"),
    ("iqr", "paired_ratio_fwd_bwd_iqr", "{0[0]:.2f}-{0[1]:.2f}"),
    ("floor", "floor_ratio_fwd_bwd", "{:.2f}"),
    ("f+b/copy", "jaxnorm_fwd_bwd_of_copy", "{:.2f}"),
    ("flax", "flax_fwd_bwd_of_copy", "{:.2f}"),
    ("resid/x", "jaxnorm_residuals_x", "{:.2f}"),
    ("flax", "flax_residuals_x", "{:.2f}"),
    ("temp/x", "jaxnorm_temp_x", "{:.2f}"),
    ("flax", "flax_temp_x", "{:.2f}"),
    ("moved/x", "jaxnorm_moved_x", "{:.0f}"),
    ("flax", "flax_moved_x", "{:.0f}"),
    ("ratio", "moved_ratio", "{:.2f}"),
    ("faults", "jaxnorm_fwd_bwd_faults", "{:.0f}"),
    ("flax", "flax_fwd_bwd_faults", "{:.0f}"),
]

SPEED_LEGEND = (
    "Median ms under jax.jit, interleaved in one process; f+b = forward + backward (grads of x,\n"
    "scale, bias); ratio = jaxnorm / flax.linen (< 1: jaxnorm faster), of the medians; iqr: the\n"
    "interquartile range of the ratios taken within each round (how far the machine moves it).\n"
    "floor: the bare reductions any forward+backward of the scheme must run (jaxnorm.bench.floor),\n"
    "timed in the same rounds, over flax.linen's time: about the lowest ratio XLA kernels allow.\n"
    "f+b/copy: achieved rate\n"
    "(reading x and the cotangent, writing dx: 3x the input's bytes) over this machine's\n"
    "elementwise-copy rate on the same array (1.0 = the traffic floor). resid/x: bytes jax.vjp\n"
    "keeps for the backward, over the input's bytes; temp/x: XLA's temporary allocation for the\n"
    "compiled forward+backward, over the input's bytes. moved/x: full-size bytes the compiled\n"
    "forward+backward's kernels read and write (jaxnorm.bench.hlo_traffic), over the input's\n"
    "bytes; ratio: jaxnorm's over flax's. faults: minor page faults per forward+backward call\n"
    "(fresh buffers from 32 MiB up are mapped anew and faulted in page by page on every call).\n"
    "err@1e4: relative L2 error at mean 1e4."
)


def format_table(rows: list[dict], columns=None) -> str:
    """A fixed-width table of the rows; missing values print as '-'.

    ``columns``: ``(header, key, format)`` triples; default the check-and-time
    table of ``python -m jaxnorm``.
    """
    columns = _COLUMNS if columns is None else columns
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[k]) if row.get(k) is not None else "-" for _, k, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, rows: list[dict], **extra) -> None:
    """Write ``{"machine": ..., **extra, "rows": rows}`` to ``path``."""
    payload = {"machine": machine_info(), **extra, "rows": rows}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
