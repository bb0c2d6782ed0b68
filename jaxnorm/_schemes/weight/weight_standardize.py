"""Weight Standardization (Qiao et al. 2019): zero mean, unit variance per output feature.

Uses: jaxnorm._core (moments, normalize, validate), jaxnorm._schemes.weight
(weight_setup).
"""

from __future__ import annotations

import jax

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction
from jaxnorm._core.normalize import NormSpec, normalize
from jaxnorm._schemes.weight.weight_setup import check_weight

__all__ = ["weight_standardize"]


def weight_standardize(w, *, feature_axis: int = -1, epsilon: float = 1e-5) -> jax.Array:
    """Weight standardization (Qiao, Wang, Liu, Shen & Yuille, arXiv:1903.10520).

    Each output feature's slice of the kernel (every axis but
    ``feature_axis``, I entries) is standardized with its mean and biased
    variance, ``ε`` inside the square root (the paper's eq. 5)::

        ŵ = (w − μ) / sqrt(σ² + ε),   μ = Σ w / I,   σ² = Σ (w − μ)² / I

    Convolve with ``ŵ`` instead of ``w`` and follow with
    :func:`jaxnorm.group_norm`: the paper's GN+WS recipe for small batches.
    The statistics are the exact shifted moments of every jaxnorm scheme;
    a constant (e.g. zero) kernel gives 0 with finite derivatives.

    Args:
      w: the kernel, rank >= 2, e.g. ``(H, W, in, out)`` or ``(in, out)``.
      feature_axis: the output-feature axis (-1 for Flax kernels, 0 for
        PyTorch's ``(out, in, ...)``).
      epsilon: added to the variance inside the square root.

    Returns:
      ``ŵ`` with ``w``'s shape and dtype.

    Raises:
      TypeError: integer kernels, a non-int feature_axis.
      ValueError: rank < 2, feature_axis out of range, a negative epsilon.
    """
    fn = "weight_standardize"
    w, _, others = check_weight(
        fn, w, feature_axis,
        fix="a vector has one entry per feature and nothing to standardize; pass the kernel",
    )
    epsilon = check.check_epsilon(fn, epsilon)
    return normalize(w, None, None, None, NormSpec(Reduction(others), epsilon, center=True))
