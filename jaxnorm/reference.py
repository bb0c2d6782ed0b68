"""Float64 NumPy references of jaxnorm's functions, for checking.

Straightforward two-pass transcriptions of the formulas, written without any
of jaxnorm's machinery: every input is converted to float64, the mean is
taken first and the variance about it second. They are the oracles of
``python -m jaxnorm`` and of the test suite. Arguments mirror the jaxnorm
functions of the same name (parameters per channel or per example, masks
whose False entries are left out and give 0); results are float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["layer_norm", "rms_norm", "group_norm", "instance_norm"]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _axes(axis, ndim):
    axis = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return tuple(sorted(a % ndim for a in axis))


def _place(p, ndim, positions):
    """Reshape p to rank ndim with its axes at positions (1 elsewhere)."""
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return p.reshape(shape)


def _normalize(x, axes, epsilon, where, center):
    """(x - mean) / sqrt(var + eps) over axes (keepdims), two passes, float64."""
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    xs = np.where(mask, x, 0.0)
    count = np.maximum(mask.sum(axes, keepdims=True), 1)
    mean = xs.sum(axes, keepdims=True) / count if center else 0.0
    dev = np.where(mask, x - mean, 0.0)
    var = (dev * dev).sum(axes, keepdims=True) / count
    return np.where(mask, dev / np.sqrt(var + epsilon), 0.0), mask


def _affine(xhat, mask, scale, bias):
    y = xhat
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return np.where(mask, y, 0.0)


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-5, where=None):
    """(x − E[x]) / sqrt(Var[x] + ε) · scale + bias over ``axis``."""
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    xhat, mask = _normalize(x, axes, epsilon, where, center=True)
    params = []
    for p in (_f64(scale), _f64(bias)):
        if p is not None:
            positions = axes if p.ndim == len(axes) else (0,) + axes
            p = _place(p, x.ndim, positions)
        params.append(p)
    return _affine(xhat, mask, *params)


def rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6, where=None):
    """x / sqrt(E[x²] + ε) · scale over ``axis``."""
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    xhat, mask = _normalize(x, axes, epsilon, where, center=False)
    p = _f64(scale)
    if p is not None:
        positions = axes if p.ndim == len(axes) else (0,) + axes
        p = _place(p, x.ndim, positions)
    return _affine(xhat, mask, p, None)


def group_norm(x, scale=None, bias=None, *, num_groups, channel_axis=-1, epsilon=1e-5, where=None):
    """Per example and group of channels: (x − μ) / sqrt(σ² + ε) · scale + bias."""
    x = _f64(x)
    c = channel_axis % x.ndim
    channels = x.shape[c]
    # Move channels last and split them: (N, spatial..., G, C/G).
    xt = np.moveaxis(x, c, -1)
    grouped = xt.reshape(xt.shape[:-1] + (num_groups, channels // num_groups))
    mask = None
    if where is not None:
        mt = np.moveaxis(np.broadcast_to(where, x.shape), c, -1)
        mask = mt.reshape(grouped.shape)
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    xhat, mask = _normalize(grouped, axes, epsilon, mask, center=True)
    xhat = np.moveaxis(xhat.reshape(xt.shape), -1, c)
    mask = np.moveaxis(mask.reshape(xt.shape), -1, c)
    params = []
    for p in (_f64(scale), _f64(bias)):
        if p is not None:
            p = _place(p, x.ndim, (c,) if p.ndim == 1 else (0, c))
        params.append(p)
    return _affine(xhat, mask, *params)


def instance_norm(x, scale=None, bias=None, *, channel_axis=-1, epsilon=1e-5, where=None):
    """Per example and channel over the spatial axes."""
    channels = np.shape(x)[channel_axis]
    return group_norm(
        x, scale, bias, num_groups=channels, channel_axis=channel_axis,
        epsilon=epsilon, where=where,
    )
