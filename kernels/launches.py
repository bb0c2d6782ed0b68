"""The kernel launches of a grouped-normalization forward or backward, for any launcher.

A pass is a list of :class:`Launch`: which kernel, on what grid, reading
which named arrays and writing which new ones. Executors (PyTorch tensors,
or JAX through jax_triton) run the list in order, each output becoming
readable by the launches after it. This keeps the launch logic in one place
and the executors free of it.
"""

from __future__ import annotations

import dataclasses

from jaxnorm_kernels import group_norm_triton as k
from jaxnorm_kernels.plan import GroupLayout, Plan

__all__ = ["Launch", "Output", "backward_launches", "forward_launches"]

LIKE_X = "like_x"  # an output with x's dtype; other outputs are float32


@dataclasses.dataclass(frozen=True)
class Output:
    name: str
    shape: tuple
    dtype: str = "float32"
    zeroed: bool = False


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: object
    grid: tuple
    inputs: tuple
    outputs: tuple
    constexprs: dict
    num_warps: int


def _cdiv(a, b):
    return -(-a // b)


def _geometry(layout: GroupLayout, p: Plan) -> dict:
    return {
        "S": layout.s, "C": layout.c, "G": layout.g,
        "STRIDE_N": layout.stride_n, "STRIDE_S": layout.stride_s, "STRIDE_C": layout.stride_c,
        "BLOCK_S": p.block_s, "BLOCK_C": p.block_c,
    }


def _flags(center, has_scale, has_bias, silu) -> dict:
    return {"CENTER": center, "HAS_SCALE": has_scale, "HAS_BIAS": has_bias, "SILU": silu}


def _split(p: Plan) -> dict:
    return {"SPLIT": p.split, "S_CHUNK": p.s_chunk}


def forward_launches(layout: GroupLayout, p: Plan, x_shape, *, epsilon, center, has_scale, has_bias, silu):
    """Launches computing ``y`` (like x), ``m`` and ``r`` (float32, ``N·G``) from x, scale, bias."""
    n, g = layout.n, layout.g
    flags = _flags(center, has_scale, has_bias, silu)
    outputs = (Output("y", tuple(x_shape), LIKE_X), Output("m", (n * g,)), Output("r", (n * g,)))
    geometry = _geometry(layout, p)
    if p.fused:
        return [Launch(k.forward_fused_kernel, (n, g, 1), ("x", "scale", "bias"), outputs,
                       {"N": n, **geometry, "ROWS": 1, "EPS": float(epsilon), **flags}, p.num_warps)]
    parts = Output("stats_parts", (n * g * p.split * 2,))
    return [
        Launch(k.stats_partials_kernel, (n, g, p.split), ("x",), (parts,),
               {**geometry, **_split(p), "CENTER": center}, p.num_warps),
        Launch(k.forward_apply_kernel, (n, g, p.split), ("x", "scale", "bias", "stats_parts"), outputs,
               {**geometry, **_split(p), "SPLIT_P2": 1 << (p.split - 1).bit_length(), "EPS": float(epsilon),
                **flags}, p.num_warps),
    ]


def backward_launches(layout: GroupLayout, p: Plan, x_shape, *, center, has_scale, has_bias, silu):
    """Launches computing ``dx`` and the dscale/dbias partial sums from x, dy, scale, bias, m, r.

    The caller sums ``dscale_parts``/``dbias_parts`` (float32, ``(blocks, C)``) over axis 0.
    """
    n, g, c = layout.n, layout.g, layout.c
    flags = _flags(center, has_scale, has_bias, silu)
    geometry = _geometry(layout, p)
    dx = Output("dx", tuple(x_shape), LIKE_X)
    ins = ("x", "dy", "scale", "bias", "m", "r")
    if p.fused:
        blocks = _cdiv(n, p.rows)
        zeroed = p.rows > 1
        outputs = (dx, Output("dscale_parts", (blocks, c), zeroed=zeroed),
                   Output("dbias_parts", (blocks, c), zeroed=zeroed))
        return [Launch(k.backward_fused_kernel, (blocks, g, 1), ins, outputs,
                       {"N": n, **geometry, "ROWS": p.rows, **flags}, p.num_warps)]
    parts = Output("grad_parts", (n * g * p.split * 2,))
    partials = (parts, Output("dscale_parts", (n * p.split, c)), Output("dbias_parts", (n * p.split, c)))
    return [
        Launch(k.backward_partials_kernel, (n, g, p.split), ins, partials,
               {**geometry, **_split(p), **flags}, p.num_warps),
        Launch(k.backward_dx_kernel, (n, g, p.split), ins + ("grad_parts",), (dx,),
               {**geometry, **_split(p), "SPLIT_P2": 1 << (p.split - 1).bit_length(), **flags}, p.num_warps),
    ]
