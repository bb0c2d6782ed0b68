"""Bytes a compiled program moves, counted from its kernels in XLA's optimized HLO.

Each kernel of the compiled entry computation (a fusion, a custom call, a
copy, a reduction...) reads its operands and writes its result once; the sum
over kernels of the full-size arrays they read and write is the program's
memory traffic, counted without running it, so it is free of timing noise.
Arrays smaller than ``min_bytes`` (statistics, parameters) are left out.
Bitcasts, tuples and parameters move nothing. A ``conditional`` counts its
cheapest branch (for jaxnorm's statistics, the one that runs on
well-conditioned inputs).

A fused kernel that only slices an operand (a per-set sample taken from
``x``) counts the slices' bytes, up to the operand's. It is an estimate: a
kernel that re-reads an operand from cache, or XLA:CPU running a fused
reduction and its consumer in two sweeps, moves more or less than counted. Comparing two programs' counts says whether one can be much
faster than the other at the same bytes per second.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import math
import re

__all__ = ["compiled_traffic", "hlo_traffic", "kernel_traffic"]

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(\w+)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$")
_MOVES_NOTHING = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "after-all"}


def _nbytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays)."""
    return sum(_BYTES.get(dtype, 4) * math.prod(int(n) for n in dims.split(",") if n)
               for dtype, dims in _ARRAY.findall(shape))


def _computations(text: str) -> dict[str, list[str]]:
    """Each computation's instruction lines; the entry one also under ``"ENTRY"``."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(2), [])
            if header.group(1):
                comps["ENTRY"] = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return comps


def _sliced_reads(lines: list[str]) -> dict[int, int]:
    """Parameter index -> bytes read, for a fused computation's parameters that it only slices."""
    params, uses = {}, {}
    for line in lines:
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        result, shape, op, operands, _ = match.groups()
        if op == "parameter":
            params[result] = int(operands)
            continue
        for operand in re.findall(r"%([\w.\-]+)", operands):
            uses.setdefault(operand, []).append((op, _nbytes(shape)))
    return {
        index: sum(n for _, n in uses[param])
        for param, index in params.items()
        if uses.get(param) and all(op in ("slice", "dynamic-slice") for op, _ in uses[param])
    }


def _kernels(comps, name: str, min_bytes: int) -> list[tuple[str, str, int, int]]:
    """``(kernel, result shape, bytes read, bytes written)`` of each kernel of computation ``name``."""
    sizes: dict[str, int] = {}
    rows = []
    for line in comps[name]:
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        result, shape, op, operands, rest = match.groups()
        sizes[result] = _nbytes(shape)
        if op in _MOVES_NOTHING:
            continue
        if op == "conditional":
            branches = re.search(r"branch_computations=\{([^}]*)\}", rest).group(1)
            cheapest = min((_kernels(comps, b.strip().lstrip("%"), min_bytes) for b in branches.split(",")),
                           key=lambda ks: sum(r + w for _, _, r, w in ks))
            rows += cheapest
            continue
        names = re.findall(r"%([\w.\-]+)", operands)
        callee = re.search(r"calls=%([\w.\-]+)", rest) if op == "fusion" else None
        sliced = _sliced_reads(comps.get(callee.group(1), [])) if callee else {}
        # Overlapping slices of one operand (a window sum) read it once.
        reads = [min(sliced.get(i, sizes.get(a, 0)), sizes.get(a, 0)) for i, a in enumerate(names)]
        read = sum(n for n in reads if n >= min_bytes)
        written = sizes[result] if sizes[result] >= min_bytes else 0
        rows.append((result, shape, read, written))
    return rows


def kernel_traffic(text: str, min_bytes: int) -> list[tuple[str, str, int, int]]:
    """Each kernel of the entry computation: ``(name, result shape, bytes read, bytes written)``.

    Only arrays of at least ``min_bytes`` count; a ``conditional`` stands for
    the kernels of its cheapest branch.
    """
    return _kernels(_computations(text), "ENTRY", min_bytes)


def hlo_traffic(text: str, min_bytes: int) -> int:
    """Bytes of arrays of at least ``min_bytes`` read and written by the entry computation's kernels.

    Args:
      text: optimized HLO text (``jax.jit(f).lower(...).compile().as_text()``).
      min_bytes: arrays smaller than this are not counted.

    Returns:
      The total, in bytes.
    """
    return sum(r + w for _, _, r, w in kernel_traffic(text, min_bytes))


def compiled_traffic(jitted, *args, like) -> float:
    """:func:`hlo_traffic` of ``jitted(*args)``, in multiples of ``like``'s bytes.

    Arrays of at least an eighth of ``like``'s size count (full-size arrays,
    not per-set statistics).
    """
    text = jitted.lower(*args).compile().as_text()
    return hlo_traffic(text, max(like.nbytes // 8, 1)) / like.nbytes
