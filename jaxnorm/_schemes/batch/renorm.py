"""Batch Renormalization (Ioffe 2017) and the schedule that relaxes its clipping.

Uses: jaxnorm._core (moments, remat), jaxnorm._schemes.batch (batch_norm,
batch_setup, running_stats).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm._core.moments import Moments, compute_dtype, moments
from jaxnorm._core.remat import keep_statistics
from jaxnorm._schemes.batch.batch_norm import batch_moments, running_normalize
from jaxnorm._schemes.batch.batch_setup import by_channel, setup
from jaxnorm._schemes.batch.running_stats import BatchStats, DEFAULT_MOMENTUM, resolve_momentum

__all__ = ["batch_renorm", "batch_renorm_schedule"]


def _check_limit(fn: str, name: str, value, low: float, example: float):
    """Accept a traced limit as is; check a concrete one is a number >= ``low``."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}; pass e.g. {name}={example}")
    if not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0:
        value = float(np.asarray(value))
        if not (np.isfinite(value) and value >= low):
            raise ValueError(
                f"{fn}: {name} must be a finite number >= {low:g}, got {name}={value!r}; "
                f"{name}={low:g} disables the correction, the paper relaxes it up to {example}"
            )
        return value
    return jnp.asarray(value)


def batch_renorm(
    x,
    scale,
    bias,
    stats,
    *,
    training: bool,
    r_max=3.0,
    d_max=5.0,
    momentum=DEFAULT_MOMENTUM,
    epsilon: float = 1e-5,
    channel_axis: int = -1,
    axis_name=None,
    axis_index_groups=None,
    where=None,
):
    """Batch Renormalization (Ioffe, NeurIPS 2017).

    Training corrects the batch statistics towards the running ones, with
    ``σ_B = sqrt(var_B + ε)`` and the running ``σ = sqrt(var + ε)``::

        r = stop_gradient(clip(σ_B / σ, 1/r_max, r_max))
        d = stop_gradient(clip((μ_B − μ) / σ, −d_max, d_max))
        y = ((x − μ_B) / σ_B · r + d) · scale + bias

    and updates the running mean and running *standard deviation* as the
    paper does (``μ ← m·μ + (1 − m)·μ_B``, ``σ ← m·σ + (1 − m)·σ_B``, stored
    as ``var = σ² − ε``). Inference uses ``μ`` and ``σ`` like BatchNorm. With
    ``r_max=1, d_max=0`` the output is BatchNorm's. ``r_max`` and ``d_max``
    may be traced (see :func:`batch_renorm_schedule`). Reduction sets,
    ``axis_name`` and masks are as in :func:`jaxnorm.batch_norm`.

    Args:
      x, scale, bias, stats, training, momentum (Flax convention), epsilon,
        channel_axis, axis_name, axis_index_groups, where: as in
        :func:`jaxnorm.batch_norm`.
      r_max: bound of the scale correction r, >= 1.
      d_max: bound of the shift correction d, >= 0.

    Returns:
      ``(y, new_stats)`` as :func:`jaxnorm.batch_norm`.

    One value per channel in training warns (as :func:`jaxnorm.batch_norm`
    in the Flax convention): ``var_B = 0`` and the output is ``d·scale + bias``.

    Raises:
      TypeError, ValueError: as :func:`jaxnorm.batch_norm`; r_max < 1 or
        d_max < 0.
    """
    fn = "batch_renorm"
    keep, weight = resolve_momentum(fn, momentum, "flax")
    r_max = _check_limit(fn, "r_max", r_max, 1.0, 3.0)
    d_max = _check_limit(fn, "d_max", d_max, 0.0, 5.0)
    s = setup(
        fn, x, scale, bias, stats, training=training, channel_axis=channel_axis,
        epsilon=epsilon, axis_name=axis_name, axis_index_groups=axis_index_groups,
        where=where, single_value="warn",
    )
    scale, bias = s.scale, s.bias
    if not training:
        return running_normalize(s, s.stats.mean, s.stats.var, scale, bias), s.stats

    def renorm(x, scale, bias):
        dtype = compute_dtype(x.dtype)
        xc = x.astype(dtype)
        # The corrections r and d carry no gradient, so y is BatchNorm with
        # scale r·γ and bias d·γ + β: one normalization, one closed-form
        # derivative. Its statistics are these (XLA computes them once).
        mo = Moments(*(lax.stop_gradient(t) for t in moments(xc, s.reduction, where=s.where)))
        run_mean, run_var = (s.channel_shaped(t.astype(dtype)) for t in (s.stats.mean, s.stats.var))
        sigma = jnp.sqrt(run_var + s.epsilon)
        sigma_b = jnp.sqrt(mo.var + s.epsilon)
        r = lax.stop_gradient(jnp.clip(sigma_b / sigma, 1 / r_max, r_max))
        # μ_B − μ formed as (shift − μ) + mean_shifted: exact when both are near.
        d = lax.stop_gradient(jnp.clip(((mo.shift - run_mean) + mo.mean_shifted) / sigma, -d_max, d_max))
        gain = r if scale is None else r * scale
        offset = d if scale is None else d * scale
        if bias is not None:
            offset = offset + bias
        y = batch_moments(s, x=xc, scale=gain, bias=offset)[0].astype(x.dtype)

        mean_b, sigma_b, count = (by_channel(t, s)[0] for t in (mo.mean, sigma_b, jnp.broadcast_to(mo.count, mo.var.shape)))
        old_sigma = jnp.sqrt(s.stats.var.astype(dtype) + s.epsilon)
        new_mean = keep * s.stats.mean + weight * mean_b.astype(s.stats.mean.dtype)
        new_sigma = keep * old_sigma + weight * sigma_b
        new_var = jnp.maximum(new_sigma * new_sigma - s.epsilon, 0)
        seen = count > 0
        new = BatchStats(
            jnp.where(seen, new_mean, s.stats.mean).astype(s.stats.mean.dtype),
            jnp.where(seen, new_var, s.stats.var).astype(s.stats.var.dtype),
            None if s.stats.count is None
            else jnp.where(jnp.any(seen), s.stats.count + 1, s.stats.count).astype(jnp.result_type(s.stats.count)),
        )
        return y, new

    # Reverse mode keeps x and the batch moments; x̂ is recomputed.
    return keep_statistics(renorm)(s.x, scale, bias)


def batch_renorm_schedule(
    step,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_steps: int = 5000,
    r_max_steps: int = 40000,
    d_max_steps: int = 25000,
):
    """The paper's relaxation of Batch Renorm's clipping over training.

    ``r_max`` stays 1 and ``d_max`` 0 (plain BatchNorm) for ``warmup_steps``,
    then both grow linearly to reach ``r_max`` at ``r_max_steps`` and
    ``d_max`` at ``d_max_steps`` (Ioffe 2017, §4: 5k, 40k and 25k steps on
    ImageNet), and stay there. ``step`` may be traced, so the schedule runs
    inside a jitted training step::

        r_max, d_max = batch_renorm_schedule(step)
        y, stats = batch_renorm(x, scale, bias, stats, training=True,
                                r_max=r_max, d_max=d_max)

    Args:
      step: the training step (int or int array).
      r_max, d_max: final bounds.
      warmup_steps: steps before relaxing starts.
      r_max_steps, d_max_steps: steps at which each bound is reached.

    Returns:
      ``(r_max_t, d_max_t)`` as float32 scalars.

    Raises:
      ValueError: if a bound is reached before the warm-up ends.
    """
    fn = "batch_renorm_schedule"
    r_max = _check_limit(fn, "r_max", r_max, 1.0, 3.0)
    d_max = _check_limit(fn, "d_max", d_max, 0.0, 5.0)
    for name, value in (("r_max_steps", r_max_steps), ("d_max_steps", d_max_steps)):
        if value <= warmup_steps:
            raise ValueError(
                f"{fn}: {name}={value} must exceed warmup_steps={warmup_steps}; the "
                f"paper uses warmup_steps=5000, d_max_steps=25000, r_max_steps=40000"
            )

    def ramp(end, final, start_value):
        t = jnp.clip((jnp.asarray(step, jnp.float32) - warmup_steps) / (end - warmup_steps), 0.0, 1.0)
        return start_value + t * (final - start_value)

    return ramp(r_max_steps, r_max, 1.0), ramp(d_max_steps, d_max, 0.0)

