"""Folding an inference-mode BatchNorm into the Dense or Conv layer before it.

Uses: jaxnorm._core (reduction, validate), jaxnorm._schemes.batch
(running_stats).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxnorm._core import validate as check
from jaxnorm._core.reduction import inverse_std
from jaxnorm._schemes.batch.running_stats import check_stats

__all__ = ["fold_batch_norm"]


def fold_batch_norm(kernel, bias, stats, scale=None, bn_bias=None, *, epsilon: float = 1e-5):
    """Fold ``BatchNorm(conv(x))`` at inference into one conv (or Dense).

    With ``a = scale / sqrt(var + ε)`` per output feature::

        kernel' = kernel · a          (along the kernel's last axis)
        bias'   = (bias − mean) · a + bn_bias

    so that ``conv(x, kernel') + bias'`` equals ``batch_norm(conv(x, kernel)
    + bias, scale, bn_bias, stats, training=False)``. Kernels are laid out
    with output features last, as in ``flax.linen.Dense`` ``(in, out)`` and
    ``flax.linen.Conv`` ``(*window, in, out)``.

    Args:
      kernel: floating array whose last axis is the output features F.
      bias: ``(F,)`` layer bias, or None (no bias).
      stats: :class:`jaxnorm.BatchStats` with ``(F,)`` running mean and var.
      scale: ``(F,)`` BatchNorm scale, or None.
      bn_bias: ``(F,)`` BatchNorm bias, or None.
      epsilon: the BatchNorm's epsilon.

    Returns:
      ``(kernel', bias')`` in the kernel's dtype.

    Raises:
      TypeError, ValueError: integer arrays, or shapes that do not match F.
    """
    fn = "fold_batch_norm"
    kernel = check.check_floating(fn, kernel)
    check.check_min_rank(fn, kernel, 1, "..., out_features", "pass the layer's kernel")
    features = kernel.shape[-1]
    stats = check_stats(fn, stats, features, kernel.shape)
    epsilon = check.check_epsilon(fn, epsilon)
    allowed = {"per output feature": (features,)}
    bias, scale, bn_bias = (
        check.check_param(fn, name, p, allowed, kernel.shape)[0]
        for name, p in (("bias", bias), ("scale", scale), ("bn_bias", bn_bias))
    )
    dtype = jnp.promote_types(kernel.dtype, np.float32)
    a = inverse_std(stats.var.astype(dtype), epsilon)
    if scale is not None:
        a = a * scale
    shifted = -stats.mean.astype(dtype) if bias is None else bias - stats.mean
    new_bias = shifted * a if bn_bias is None else shifted * a + bn_bias
    return (kernel * a).astype(kernel.dtype), new_bias.astype(kernel.dtype)
