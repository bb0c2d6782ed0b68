"""``1/sqrt(var + ε)`` of each reduction set, with a closed-form derivative.

EvoNorm divides by a set's standard deviation without subtracting its mean
from the numerator, so it cannot end in :func:`jaxnorm._normalize.normalize`.
Differentiated op by op, the statistics core's moments (their ``lax.cond``,
the grouped broadcasts) become a backward pass that XLA:CPU stores several
full-size arrays for. The derivative of ``r = (var + ε)^(−1/2)`` is short::

    ṙ = −r³ · E[(x − μ) · ẋ]

(``E`` the mean over the set; ``var`` is the biased variance). It is given
as a ``jax.custom_jvp`` made of JAX operations and linear in ``ẋ``: JAX
transposes it for reverse mode, ``x̄ += (x − μ) · (−r³ · Σ r̄ / n)`` with the
sum of ``r̄`` over each set, and forward mode and higher orders keep working.
``x − μ`` is formed as ``(x − shift) − mean_shifted``, exact at large means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._remat import statistic
from jaxnorm._stats import Reduction, moments

__all__ = ["set_rstd"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def set_rstd(x: jax.Array, reduction: Reduction, epsilon: float) -> jax.Array:
    """``1/sqrt(var + ε)`` of each set of ``reduction`` (keepdims shape, ``x``'s dtype).

    Args:
      x: floating input, already in the compute dtype.
      reduction: the sets (hashable; ``axis_name`` pools across devices).
      epsilon: added to the biased variance.

    Returns:
      The reciprocal standard deviation of each set, broadcastable to ``x``.
    """
    return lax.rsqrt(moments(x, reduction).var + epsilon)


@set_rstd.defjvp
def _set_rstd_jvp(reduction, epsilon, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    mo = moments(x, reduction)
    r = statistic(lax.rsqrt(mo.var + epsilon))
    centred = (x - mo.shift) - mo.mean_shifted
    mean = reduction.sum(centred * x_dot) / jnp.maximum(mo.count, 1)
    return r, -(r * r * r) * mean
