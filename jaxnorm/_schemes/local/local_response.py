"""Local Response Normalization (Krizhevsky et al. 2012), PyTorch's formula.

Uses: jaxnorm._core (moments, remat, validate).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm._core import validate as check
from jaxnorm._core.moments import compute_dtype
from jaxnorm._core.remat import keep_statistics

__all__ = ["local_response_norm"]


def _check_number(fn, name, value, *, positive=False, nonnegative=False, example):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: {name} must be a Python number, got {value!r} of type "
            f"{type(value).__name__}; pass e.g. {name}={example}"
        )
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{fn}: {name} must be {need}, got {name}={value!r}; pass e.g. {name}={example}")
    if nonnegative and value < 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {name}={value!r}; pass e.g. {name}={example}")
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


def _window_sum_linear(t, axis, size):
    """:func:`_window_sum` as one ``reduce_window``, for tangents.

    Same values; JAX transposes it into a single windowed sum, where the
    transpose of the slices is a sum of padded copies that XLA:CPU runs
    several times slower.
    """
    window = [1] * t.ndim
    window[axis] = size
    pad = [(0, 0)] * t.ndim
    pad[axis] = (size // 2, (size - 1) // 2)
    return lax.reduce_window(t, np.zeros((), t.dtype), lax.add, window, (1,) * t.ndim, pad)


def _negative_power(b, beta):
    """``b^(−β)`` for ``b > 0``; common exponents through rsqrt, others exp(−β·log b)."""
    if beta == 0.75:
        return lax.rsqrt(b) * lax.rsqrt(jnp.sqrt(b))
    if beta == 0.5:
        return lax.rsqrt(b)
    if beta == 1.0:
        return 1 / b
    return jnp.exp(-beta * jnp.log(b))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn(x, axis, size, alpha, beta, k):
    return x * _negative_power(k + (alpha / size) * _window_sum(x * x, axis, size), beta)


@_lrn.defjvp
def _lrn_jvp(axis, size, alpha, beta, k, primals, tangents):
    """``ẏ = b^(−β)·ẋ − (2αβ/size)·x·b^(−β−1)·W(x·ẋ)``, ``W`` the window sum.

    Written out so that the window sum of the tangent is a
    ``reduce_window`` (see :func:`_window_sum_linear`); it is made of JAX
    operations, so forward mode and higher orders keep working.
    """
    (x,), (x_dot,) = primals, tangents
    b = k + (alpha / size) * _window_sum(x * x, axis, size)
    a = _negative_power(b, beta)
    y = x * a
    coefficient = (2 * alpha * beta / size) * y / b
    return y, a * x_dot - coefficient * _window_sum_linear(x * x_dot, axis, size)


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
      alpha: multiplicative factor (divided by ``size``), >= 0.
      beta: exponent.
      k: additive constant, > 0 (the denominator must not vanish).
      channel_axis: the channel axis (default -1).

    Returns:
      ``y`` with ``x``'s shape and dtype.

    Raises:
      TypeError: integer inputs, non-number settings.
      ValueError: ``size <= 0``, ``k <= 0``, ``alpha < 0``, non-finite settings, a scalar
        input, channel_axis out of range.
    """
    fn = "local_response_norm"
    x = check.check_floating(fn, x)
    check.check_min_rank(fn, x, 1, "..., channels", "pass at least a channel axis, e.g. x[None]")
    c_axis = check.canonical_axis(fn, channel_axis, x.ndim, x.shape, name="channel_axis")
    size = check.check_positive_int(fn, "size", size, example=5)
    # alpha < 0 would let the denominator reach 0 or go negative (NaN); k > 0 likewise.
    alpha = _check_number(fn, "alpha", alpha, nonnegative=True, example=1e-4)
    beta = _check_number(fn, "beta", beta, example=0.75)
    k = _check_number(fn, "k", k, positive=True, example=1.0)
    xc = x.astype(compute_dtype(x.dtype))
    # Reverse mode keeps x only; the window sum is recomputed in the backward.
    lrn = keep_statistics(lambda t: _lrn(t, c_axis, size, alpha, beta, k))
    return lrn(xc).astype(x.dtype)
