"""Local Response Normalization (Krizhevsky et al. 2012), PyTorch's formula."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _validate as v
from jaxnorm._stats import compute_dtype

__all__ = ["local_response_norm"]


def _check_number(fn, name, value, *, positive=False, example):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: {name} must be a Python number, got {value!r} of type "
            f"{type(value).__name__}; pass e.g. {name}={example}"
        )
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{fn}: {name} must be {need}, got {name}={value!r}; pass e.g. {name}={example}")
    return value


def _window_sum(t, axis, size):
    """``Σ t`` over the window ``[c − size//2, c + (size−1)//2]`` of each channel ``c``.

    Zero-padded at both ends; a sum of ``size`` shifted slices, which XLA
    fuses into one elementwise pass.
    """
    channels = t.shape[axis]
    pad = [(0, 0)] * t.ndim
    pad[axis] = (size // 2, (size - 1) // 2)
    padded = jnp.pad(t, pad)
    total = lax.slice_in_dim(padded, 0, channels, axis=axis)
    for j in range(1, size):
        total = total + lax.slice_in_dim(padded, j, j + channels, axis=axis)
    return total


def local_response_norm(
    x,
    *,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    channel_axis: int = -1,
) -> jax.Array:
    """Local response normalization across channels (Krizhevsky et al. 2012).

    Each entry is divided by the energy of a window of ``size`` neighbouring
    channels (zero-padded at the edges), with PyTorch's scaling of ``alpha``
    by the window size::

        y_c = x_c / (k + α/size · Σ_{c' = c − ⌊size/2⌋}^{c + ⌊(size−1)/2⌋} x_{c'}²)^β

    (AlexNet's paper writes α without the division: pass ``alpha·size`` to
    reproduce it.) Batch-independent; any layout and rank.

    Args:
      x: floating array with a channel axis, e.g. ``(N, H, W, C)``.
      size: number of channels in the window, >= 1.
      alpha: multiplicative factor (divided by ``size``).
      beta: exponent.
      k: additive constant, > 0 (the denominator must not vanish).
      channel_axis: the channel axis (default -1).

    Returns:
      ``y`` with ``x``'s shape and dtype.

    Raises:
      TypeError: integer inputs, non-number settings.
      ValueError: ``size <= 0``, ``k <= 0``, non-finite settings, a scalar
        input, channel_axis out of range.
    """
    fn = "local_response_norm"
    x = v.check_floating(fn, x)
    v.check_min_rank(fn, x, 1, "..., channels", "pass at least a channel axis, e.g. x[None]")
    c_axis = v.canonical_axis(fn, channel_axis, x.ndim, x.shape, name="channel_axis")
    size = v.check_positive_int(fn, "size", size, example=5)
    alpha = _check_number(fn, "alpha", alpha, example=1e-4)
    beta = _check_number(fn, "beta", beta, example=0.75)
    k = _check_number(fn, "k", k, positive=True, example=1.0)
    xc = x.astype(compute_dtype(x.dtype))
    energy = _window_sum(xc * xc, c_axis, size)
    return (xc * (k + (alpha / size) * energy) ** -beta).astype(x.dtype)
