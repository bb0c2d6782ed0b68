"""Triton kernels for the grouped normalization over an ``(N, S, C)`` view, forward and backward.

Notation (per row ``n`` and group ``g``; ``j`` runs over the group's ``M = S·C/G``
elements, ``c`` is an element's channel)::

    K   = x[n, 0, g·C/G]                     (shift: the group's first element)
    m   = mean(x − K),  var = mean((x − K)²) − m²     (uncentered: K = m = 0)
    r   = 1 / sqrt(var + ε),   x̂ = ((x − K) − m) · r
    z   = x̂ · scale[c] + bias[c],   y = z  or  z · sigmoid(z)   (SiLU)

Backward, with ``dz = dy`` (or ``dy · σ(z)(1 + z(1 − σ(z)))`` after SiLU)
and ``u = dz · scale[c]``::

    dx = r · (u − mean(u) − x̂ · mean(u · x̂))        (uncentered: no mean(u))
    dscale[c] = Σ dz · x̂,   dbias[c] = Σ dz         (over rows and positions)

Exactness: moments are taken of ``x − K`` (no E[x²] − E[x]²) and normalized
values are formed as ``(x − K) − m``, so a mean of 1e4 costs no digits in
float32. Kernels store ``m`` (the mean of ``x − K``), not the mean, for the
backward; the mean is ``K + m``. Statistics are float32 for every input type.

Grids. ``(row blocks, G, split)``. With ``split == 1`` a program owns whole
groups and runs fused (statistics then normalize, or backward sums then dx).
Otherwise a group's positions are cut into ``split`` chunks: a first kernel
writes per-chunk partial sums and a second combines them and normalizes.
``dscale``/``dbias`` come out as per-program partial sums
``(row blocks · split, C)``, summed by the caller.

This module imports only triton.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "backward_dx_kernel",
    "backward_fused_kernel",
    "backward_partials_kernel",
    "forward_apply_kernel",
    "forward_fused_kernel",
    "stats_partials_kernel",
]


# ------------------------------------------------------------- helpers


@triton.jit
def _tile(s0, c0, s_end, CG: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Element offsets (from the group's start), mask and channel indices of one tile."""
    si = s0 + tl.arange(0, BLOCK_S)
    cj = c0 + tl.arange(0, BLOCK_C)
    mask = (si < s_end)[:, None] & (cj < CG)[None, :]
    offs = si[:, None].to(tl.int64) * STRIDE_S + cj[None, :].to(tl.int64) * STRIDE_C
    return offs, mask, cj


@triton.jit
def _group_base(n, g, CG: tl.constexpr, STRIDE_N: tl.constexpr, STRIDE_C: tl.constexpr):
    return n.to(tl.int64) * STRIDE_N + (g * CG).to(tl.int64) * STRIDE_C


@triton.jit
def _shift(x_ptr, base, CENTER: tl.constexpr):
    if CENTER:
        return tl.load(x_ptr + base).to(tl.float32)
    return 0.0


@triton.jit
def _saved_group(x_ptr, m_ptr, r_ptr, n, g, G: tl.constexpr, CG: tl.constexpr, STRIDE_N: tl.constexpr,
                 STRIDE_C: tl.constexpr, CENTER: tl.constexpr):
    """``(base, K, m, r)`` of group ``(n, g)`` for the backward: its offset, shift and saved statistics."""
    base = _group_base(n, g, CG, STRIDE_N, STRIDE_C)
    return base, _shift(x_ptr, base, CENTER), tl.load(m_ptr + n * G + g), tl.load(r_ptr + n * G + g)


@triton.jit
def _partial_moments(x_ptr, base, k, s_begin, s_end, CG: tl.constexpr, STRIDE_S: tl.constexpr,
                     STRIDE_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """``(Σ (x − k), Σ (x − k)²)`` over positions ``[s_begin, s_end)`` of one group."""
    acc1 = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    acc2 = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    for c0 in range(0, CG, BLOCK_C):
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs, mask, _ = _tile(s0, c0, s_end, CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - k, 0.0)
            acc1 += d
            acc2 += d * d
    return tl.sum(tl.sum(acc1, axis=1), axis=0), tl.sum(tl.sum(acc2, axis=1), axis=0)


@triton.jit
def _finish_moments(s1, s2, M: tl.constexpr, EPS: tl.constexpr, CENTER: tl.constexpr):
    """``(m, r)`` from the group's sums of ``x − K`` and ``(x − K)²``."""
    if CENTER:
        m = s1 / M
        var = s2 / M - m * m
    else:
        m = s1 * 0.0
        var = s2 / M
    var = tl.maximum(var, 0.0)
    return m, 1.0 / tl.sqrt_rn(var + EPS)


@triton.jit
def _channel_params(scale_ptr, bias_ptr, ch, cmask, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    if HAS_SCALE:
        w = tl.load(scale_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.where(cmask, 1.0, 0.0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    else:
        b = tl.where(cmask, 0.0, 0.0)
    return w, b


@triton.jit
def _normalize_range(x_ptr, y_ptr, scale_ptr, bias_ptr, base, g, k, m, r, s_begin, s_end,
                     CG: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CENTER: tl.constexpr,
                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Write ``y`` for positions ``[s_begin, s_end)`` of one group."""
    for c0 in range(0, CG, BLOCK_C):
        cj = c0 + tl.arange(0, BLOCK_C)
        w, b = _channel_params(scale_ptr, bias_ptr, g * CG + cj, cj < CG, HAS_SCALE, HAS_BIAS)
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs, mask, _ = _tile(s0, c0, s_end, CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            z = ((x - k) - m) * r * w[None, :] + b[None, :]
            if SILU:
                z = z * tl.sigmoid(z)
            tl.store(y_ptr + base + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_terms(x, dy, w, b, k, m, r, CENTER: tl.constexpr, SILU: tl.constexpr):
    """``(x̂, dz)`` of one tile (float32)."""
    xhat = ((x - k) - m) * r
    if SILU:
        z = xhat * w[None, :] + b[None, :]
        sig = tl.sigmoid(z)
        dz = dy * (sig * (1.0 + z * (1.0 - sig)))
    else:
        dz = dy
    return xhat, dz


@triton.jit
def _backward_sums(x_ptr, dy_ptr, scale_ptr, bias_ptr, dscale_ptr, dbias_ptr, part_row, base, g, k, m, r,
                   s_begin, s_end, C: tl.constexpr, CG: tl.constexpr, STRIDE_S: tl.constexpr,
                   STRIDE_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                   CENTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SILU: tl.constexpr, ACCUMULATE: tl.constexpr):
    """``(Σ u, Σ u·x̂)`` over positions ``[s_begin, s_end)``; Σ dz·x̂ and Σ dz per channel go
    to row ``part_row`` of the dscale/dbias partial buffers (stored, or atomically added to a
    zeroed buffer when ACCUMULATE)."""
    acc_u = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    acc_ux = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    for c0 in range(0, CG, BLOCK_C):
        cj = c0 + tl.arange(0, BLOCK_C)
        cmask = cj < CG
        w, b = _channel_params(scale_ptr, bias_ptr, g * CG + cj, cmask, HAS_SCALE, HAS_BIAS)
        ds = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
        db = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs, mask, _ = _tile(s0, c0, s_end, CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            xhat, dz = _backward_terms(x, dy, w, b, k, m, r, CENTER, SILU)
            xhat = tl.where(mask, xhat, 0.0)
            u = dz * w[None, :]
            acc_u += u
            acc_ux += u * xhat
            ds += dz * xhat
            db += dz
        out = part_row.to(tl.int64) * C + g * CG + cj
        if ACCUMULATE:  # several rows per program add into one (zeroed) row
            tl.atomic_add(dscale_ptr + out, tl.sum(ds, axis=0), mask=cmask)
            tl.atomic_add(dbias_ptr + out, tl.sum(db, axis=0), mask=cmask)
        else:
            tl.store(dscale_ptr + out, tl.sum(ds, axis=0), mask=cmask)
            tl.store(dbias_ptr + out, tl.sum(db, axis=0), mask=cmask)
    return tl.sum(tl.sum(acc_u, axis=1), axis=0), tl.sum(tl.sum(acc_ux, axis=1), axis=0)


@triton.jit
def _dx_range(x_ptr, dy_ptr, scale_ptr, bias_ptr, dx_ptr, base, g, k, m, r, mean_u, mean_ux, s_begin, s_end,
              CG: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr, BLOCK_S: tl.constexpr,
              BLOCK_C: tl.constexpr, CENTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
              SILU: tl.constexpr):
    """Write ``dx = r·(u − mean(u) − x̂·mean(u·x̂))`` for positions ``[s_begin, s_end)``."""
    for c0 in range(0, CG, BLOCK_C):
        cj = c0 + tl.arange(0, BLOCK_C)
        w, b = _channel_params(scale_ptr, bias_ptr, g * CG + cj, cj < CG, HAS_SCALE, HAS_BIAS)
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs, mask, _ = _tile(s0, c0, s_end, CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            xhat, dz = _backward_terms(x, dy, w, b, k, m, r, CENTER, SILU)
            dx = r * (dz * w[None, :] - mean_u - xhat * mean_ux)
            tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------- forward


@triton.jit
def forward_fused_kernel(x_ptr, scale_ptr, bias_ptr, y_ptr, m_ptr, r_ptr,
                         N: tl.constexpr, S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                         STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
                         EPS: tl.constexpr, CENTER: tl.constexpr, HAS_SCALE: tl.constexpr,
                         HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """One program per ``ROWS`` rows of one group: statistics, then ``y``; stores m and r."""
    CG: tl.constexpr = C // G
    g = tl.program_id(1)
    for i in range(ROWS):
        n = tl.program_id(0) * ROWS + i
        if n < N:
            base = _group_base(n, g, CG, STRIDE_N, STRIDE_C)
            k = _shift(x_ptr, base, CENTER)
            s1, s2 = _partial_moments(x_ptr, base, k, 0, S, CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C)
            m, r = _finish_moments(s1, s2, S * CG, EPS, CENTER)
            _normalize_range(x_ptr, y_ptr, scale_ptr, bias_ptr, base, g, k, m, r, 0, S, CG, STRIDE_S,
                             STRIDE_C, BLOCK_S, BLOCK_C, CENTER, HAS_SCALE, HAS_BIAS, SILU)
            tl.store(m_ptr + n * G + g, m)
            tl.store(r_ptr + n * G + g, r)


@triton.jit
def stats_partials_kernel(x_ptr, part_ptr,
                          S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                          STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                          SPLIT: tl.constexpr, S_CHUNK: tl.constexpr, BLOCK_S: tl.constexpr,
                          BLOCK_C: tl.constexpr, CENTER: tl.constexpr):
    """Partial sums of ``x − K`` and ``(x − K)²`` over one chunk: ``part[n, g, p] = (s1, s2)``."""
    CG: tl.constexpr = C // G
    n, g, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    base = _group_base(n, g, CG, STRIDE_N, STRIDE_C)
    k = _shift(x_ptr, base, CENTER)
    s_begin = p * S_CHUNK
    s1, s2 = _partial_moments(x_ptr, base, k, s_begin, tl.minimum(s_begin + S_CHUNK, S), CG, STRIDE_S,
                              STRIDE_C, BLOCK_S, BLOCK_C)
    out = ((n * G + g) * SPLIT + p) * 2
    tl.store(part_ptr + out, s1)
    tl.store(part_ptr + out + 1, s2)


@triton.jit
def _chunk_totals(part_ptr, row, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr):
    """Sums over the ``SPLIT`` chunks of the pairs ``part[row, p] = (a, b)``."""
    p = tl.arange(0, SPLIT_P2)
    offs = (row * SPLIT + p) * 2
    a = tl.load(part_ptr + offs, mask=p < SPLIT, other=0.0)
    b = tl.load(part_ptr + offs + 1, mask=p < SPLIT, other=0.0)
    return tl.sum(a, axis=0), tl.sum(b, axis=0)


@triton.jit
def forward_apply_kernel(x_ptr, scale_ptr, bias_ptr, part_ptr, y_ptr, m_ptr, r_ptr,
                         S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                         STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                         SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, S_CHUNK: tl.constexpr,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, EPS: tl.constexpr,
                         CENTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SILU: tl.constexpr):
    """Combine the chunks' partial sums and write ``y`` for one chunk (program p = 0 stores m, r)."""
    CG: tl.constexpr = C // G
    n, g, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    base = _group_base(n, g, CG, STRIDE_N, STRIDE_C)
    k = _shift(x_ptr, base, CENTER)
    s1, s2 = _chunk_totals(part_ptr, n * G + g, SPLIT, SPLIT_P2)
    m, r = _finish_moments(s1, s2, S * CG, EPS, CENTER)
    s_begin = p * S_CHUNK
    _normalize_range(x_ptr, y_ptr, scale_ptr, bias_ptr, base, g, k, m, r, s_begin,
                     tl.minimum(s_begin + S_CHUNK, S), CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C, CENTER,
                     HAS_SCALE, HAS_BIAS, SILU)
    if p == 0:
        tl.store(m_ptr + n * G + g, m)
        tl.store(r_ptr + n * G + g, r)


# ------------------------------------------------------------ backward


@triton.jit
def backward_fused_kernel(x_ptr, dy_ptr, scale_ptr, bias_ptr, m_ptr, r_ptr, dx_ptr, dscale_ptr, dbias_ptr,
                          N: tl.constexpr, S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                          STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
                          CENTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          SILU: tl.constexpr):
    """One program per ``ROWS`` rows of one group: the group sums, then ``dx``.

    dscale/dbias partials: row ``program_id(0)`` of ``(cdiv(N, ROWS), C)`` buffers, summed over the
    program's rows (atomically: the buffers must be zeroed when ROWS > 1).
    """
    CG: tl.constexpr = C // G
    g = tl.program_id(1)
    M: tl.constexpr = S * CG
    for i in range(ROWS):
        n = tl.program_id(0) * ROWS + i
        if n < N:
            base, k, m, r = _saved_group(x_ptr, m_ptr, r_ptr, n, g, G, CG, STRIDE_N, STRIDE_C, CENTER)
            su, sux = _backward_sums(x_ptr, dy_ptr, scale_ptr, bias_ptr, dscale_ptr, dbias_ptr,
                                     tl.program_id(0), base, g, k, m, r, 0, S, C, CG, STRIDE_S, STRIDE_C,
                                     BLOCK_S, BLOCK_C, CENTER, HAS_SCALE, HAS_BIAS, SILU, ROWS > 1)
            mean_u = su / M if CENTER else 0.0
            _dx_range(x_ptr, dy_ptr, scale_ptr, bias_ptr, dx_ptr, base, g, k, m, r, mean_u, sux / M, 0, S,
                      CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C, CENTER, HAS_SCALE, HAS_BIAS, SILU)


@triton.jit
def backward_partials_kernel(x_ptr, dy_ptr, scale_ptr, bias_ptr, m_ptr, r_ptr, part_ptr, dscale_ptr, dbias_ptr,
                             S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                             STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                             SPLIT: tl.constexpr, S_CHUNK: tl.constexpr, BLOCK_S: tl.constexpr,
                             BLOCK_C: tl.constexpr, CENTER: tl.constexpr, HAS_SCALE: tl.constexpr,
                             HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Per-chunk ``(Σ u, Σ u·x̂)`` into ``part[n, g, p]``; dscale/dbias partials into row n·SPLIT + p."""
    CG: tl.constexpr = C // G
    n, g, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    base, k, m, r = _saved_group(x_ptr, m_ptr, r_ptr, n, g, G, CG, STRIDE_N, STRIDE_C, CENTER)
    s_begin = p * S_CHUNK
    su, sux = _backward_sums(x_ptr, dy_ptr, scale_ptr, bias_ptr, dscale_ptr, dbias_ptr, n * SPLIT + p, base, g,
                             k, m, r, s_begin, tl.minimum(s_begin + S_CHUNK, S), C, CG, STRIDE_S, STRIDE_C,
                             BLOCK_S, BLOCK_C, CENTER, HAS_SCALE, HAS_BIAS, SILU, False)
    out = ((n * G + g) * SPLIT + p) * 2
    tl.store(part_ptr + out, su)
    tl.store(part_ptr + out + 1, sux)


@triton.jit
def backward_dx_kernel(x_ptr, dy_ptr, scale_ptr, bias_ptr, m_ptr, r_ptr, part_ptr, dx_ptr,
                       S: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                       STRIDE_N: tl.constexpr, STRIDE_S: tl.constexpr, STRIDE_C: tl.constexpr,
                       SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, S_CHUNK: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CENTER: tl.constexpr,
                       HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Combine the chunks' ``(Σ u, Σ u·x̂)`` and write ``dx`` for one chunk."""
    CG: tl.constexpr = C // G
    M: tl.constexpr = S * CG
    n, g, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    base, k, m, r = _saved_group(x_ptr, m_ptr, r_ptr, n, g, G, CG, STRIDE_N, STRIDE_C, CENTER)
    su, sux = _chunk_totals(part_ptr, n * G + g, SPLIT, SPLIT_P2)
    mean_u = su / M if CENTER else 0.0
    s_begin = p * S_CHUNK
    _dx_range(x_ptr, dy_ptr, scale_ptr, bias_ptr, dx_ptr, base, g, k, m, r, mean_u, sux / M, s_begin,
              tl.minimum(s_begin + S_CHUNK, S), CG, STRIDE_S, STRIDE_C, BLOCK_S, BLOCK_C, CENTER, HAS_SCALE,
              HAS_BIAS, SILU)
