"""Filter Response Normalization with its thresholded linear unit (Singh & Krishnan 2020).

Uses: jaxnorm._core (normalize, remat), jaxnorm._schemes.per_example
(channel_setup).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm._core.normalize import NormSpec, normalize
from jaxnorm._core.remat import keep_statistics
from jaxnorm._schemes.per_example.channel_setup import channel_setup

__all__ = ["filter_response_norm"]


def filter_response_norm(
    x,
    scale=None,
    bias=None,
    tau=None,
    *,
    channel_axis: int = -1,
    epsilon: float = 1e-6,
) -> jax.Array:
    """Filter response normalization and TLU (Singh & Krishnan, CVPR 2020).

    Each channel of each example is divided by the root mean square of its
    responses over the spatial axes (no mean is subtracted), then an affine
    map and, when ``tau`` is given, the thresholded linear unit::

        ν² = mean over spatial of x²
        y = scale · x / sqrt(ν² + ε) + bias
        z = max(y, tau)                      (TLU)

    Batch-independent: axis 0 is the batch and is never reduced over. With
    no spatial axis (an ``(N, C)`` input) ``ν² = x²``; the paper then
    recommends a larger (there: learned) ε.

    Args:
      x: floating array ``(N, spatial..., C)`` or ``(N, C, spatial...)``
        with ``channel_axis=1``.
      scale: None, per channel ``(C,)`` or per example ``(N, C)``.
      bias: like ``scale``.
      tau: the TLU's learned threshold, like ``scale``; None for no TLU.
      channel_axis: the channel axis (default -1).
      epsilon: added to ``ν²`` inside the square root.

    Returns:
      ``z`` (or ``y`` without ``tau``), same shape and dtype as ``x``.

    Raises:
      TypeError: integer inputs or parameters.
      ValueError: rank < 2, channel_axis out of range or 0, parameters of
        the wrong shape.
    """
    s = channel_setup(
        "filter_response_norm", x, {"scale": scale, "bias": bias, "tau": tau},
        channel_axis=channel_axis, epsilon=epsilon,
    )
    spec = NormSpec(s.reduction(), s.epsilon, center=False)

    def frn(x, scale, bias, tau):
        y = normalize(x, scale, bias, None, spec)
        return y if tau is None else jnp.maximum(y, tau.astype(y.dtype))

    # Reverse mode keeps x and ν² only; y (for the TLU's mask) is recomputed.
    return keep_statistics(frn)(s.x, s.params["scale"], s.params["bias"], s.params["tau"])
