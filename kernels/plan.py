"""How a grouped normalization is laid out for the kernels: shapes, strides, tiles and grid.

Every supported normalization is one grouped reduction over an input seen
as ``(N, S, C)`` with arbitrary strides: ``N`` independent rows (examples
or tokens), ``S`` positions and ``C`` channels split into ``G`` groups of
``C // G`` contiguous channels. The statistics of row ``n``, group ``g`` are
taken over all ``S × C/G`` elements ``x[n, s, g·C/G + j]``.

=============  ==============================  =====================
scheme         view                            groups
=============  ==============================  =====================
GroupNorm      ``(N, spatial, C)`` NHWC/NCHW    ``G``
InstanceNorm   the same                        ``G = C``
LayerNorm      ``(rows, 1, D)``                ``G = 1``
RMSNorm        the same, uncentered            ``G = 1``
=============  ==============================  =====================

When ``N·G`` rows are too few to fill the GPU, each group's reduction is
split over ``split`` programs along ``S`` (two launches: partial sums, then
normalize); otherwise one program owns a group (one fused launch).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["GroupLayout", "plan", "layout_of"]

TILE_ELEMENTS = 4096  # elements one program holds per step
MAX_BLOCK_C = 8192
TARGET_PROGRAMS = 1056  # 8 per SM on a 132-SM H100


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class GroupLayout:
    """An ``(N, S, C)`` view with ``G`` channel groups and element strides."""

    n: int
    s: int
    c: int
    g: int
    stride_n: int
    stride_s: int
    stride_c: int

    @property
    def group_channels(self) -> int:
        return self.c // self.g

    @property
    def group_size(self) -> int:
        return self.s * self.group_channels


def layout_of(shape, *, num_groups: int, channel_axis: int) -> GroupLayout:
    """The ``GroupLayout`` of a contiguous array of ``shape``.

    ``channel_axis`` is 1 (channels first: ``(N, C, spatial...)``) or the
    last axis (channels last: ``(N, spatial..., C)`` or ``(rows, C)``).
    Axes before the channels other than axis 0 are positions too, so a
    ``(rows, D)`` array with one group is LayerNorm over ``D``.
    """
    ndim = len(shape)
    axis = channel_axis % ndim
    n, c = int(shape[0]), int(shape[axis])
    s = math.prod(int(d) for i, d in enumerate(shape) if i not in (0, axis))
    if axis == ndim - 1:
        return GroupLayout(n, s, c, num_groups, s * c, c, 1)
    if axis == 1:
        return GroupLayout(n, s, c, num_groups, s * c, 1, s)
    raise ValueError(f"channel_axis must be 1 or the last axis, got {channel_axis} for rank {ndim}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tile sizes and grids of a forward or backward pass.

    ``split`` programs share each group (positions cut into chunks of
    ``s_chunk``); with ``split == 1`` each program owns whole groups, and in
    the backward ``rows`` of them (one group, consecutive rows), which keeps
    the dscale/dbias partial sums small when rows are many.
    """

    block_s: int
    block_c: int
    split: int
    s_chunk: int
    rows: int
    num_warps: int

    @property
    def fused(self) -> bool:
        return self.split == 1


def plan(layout: GroupLayout, *, split: int | None = None, rows: int | None = None,
         tile_elements: int = TILE_ELEMENTS) -> Plan:
    """Choose tiles and the number of programs per group.

    Args:
      layout: the input's ``GroupLayout``.
      split: programs per group; None picks enough to fill the GPU.
      rows: rows per backward program when ``split == 1``; None picks
        enough for about ``TARGET_PROGRAMS`` programs.
      tile_elements: elements per tile step (a power of two); the channel
        block takes up to ``MAX_BLOCK_C`` of them regardless.

    Returns:
      A ``Plan``; ``s_chunk`` (positions per program) is a multiple of
      ``block_s``.
    """
    cg = layout.group_channels
    block_c = min(_next_pow2(cg), MAX_BLOCK_C, tile_elements)
    block_s = max(1, min(_next_pow2(layout.s), tile_elements // block_c))
    s_blocks = -(-layout.s // block_s)
    groups = layout.n * layout.g
    if split is None:
        split = 1 if groups >= TARGET_PROGRAMS // 2 else -(-TARGET_PROGRAMS // groups)
    split = max(1, min(int(split), s_blocks))
    s_chunk = -(-s_blocks // split) * block_s
    split = -(-layout.s // s_chunk)  # no empty programs
    if split > 1:
        rows = 1
    elif rows is None:
        rows = max(1, groups // TARGET_PROGRAMS)
    rows = max(1, min(int(rows), layout.n))
    tile = block_s * block_c
    num_warps = 4 if tile <= 1024 else 8 if tile <= 4096 else 16
    return Plan(block_s, block_c, split, s_chunk, rows, num_warps)
