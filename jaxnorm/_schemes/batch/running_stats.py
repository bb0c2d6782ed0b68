"""Running statistics of the BatchNorm family, and how a batch updates them.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_MOMENTUM", "BatchStats", "check_stats", "resolve_momentum", "update_stats"]


class BatchStats(NamedTuple):
    """Running mean and biased variance per channel, for the BatchNorm family.

    Attributes:
      mean: ``(C,)`` running mean (complex once a complex batch is folded in).
      var: ``(C,)`` running variance (biased in the Flax convention, unbiased
        in PyTorch's).
      count: number of training batches seen (a scalar), or None. Needed only
        by PyTorch's cumulative average (``convention="torch"``,
        ``momentum=None``); otherwise it is incremented when present.
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array | None = None

    @classmethod
    def init(cls, num_features: int, dtype=jnp.float32) -> BatchStats:
        """Zeros for the mean, ones for the variance, a zero batch count."""
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features <= 0:
            raise ValueError(
                f"BatchStats.init: num_features must be a positive int, got "
                f"{num_features!r}; pass the channel count, e.g. BatchStats.init(64)"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"BatchStats.init: dtype must be floating point, got {jnp.dtype(dtype)}; "
                f"pass e.g. dtype=jnp.float32 (the default)"
            )
        return cls(
            jnp.zeros((num_features,), dtype),
            jnp.ones((num_features,), dtype),
            jnp.zeros((), jnp.int32),
        )


class _DefaultMomentum(float):
    """The default momentum: 0.99 in the Flax convention, 0.1 in PyTorch's."""

    def __repr__(self):
        return "0.99"


DEFAULT_MOMENTUM = _DefaultMomentum(0.99)
_CONVENTIONS = ("flax", "torch")


def resolve_momentum(fn: str, momentum, convention: str):
    """Check ``convention`` and ``momentum``; return the weights of old and batch.

    Flax: ``new = momentum·old + (1 − momentum)·batch``; PyTorch:
    ``new = (1 − momentum)·old + momentum·batch``, ``momentum=None`` meaning
    the cumulative average. Returns ``(keep, weight)`` with
    ``new = keep·old + weight·batch``, or None for the cumulative average.
    A traced momentum is accepted as is.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(
            f"{fn}: convention must be 'flax' or 'torch', got {convention!r}; "
            f"'flax' (default) keeps biased running variance with decay momentum, "
            f"'torch' matches torch.nn.functional.batch_norm"
        )
    if momentum is None:
        if convention != "torch":
            raise ValueError(
                f"{fn}: momentum=None (cumulative average) exists only in PyTorch's "
                f"convention; pass convention='torch', or a decay such as momentum=0.99"
            )
        return None
    if type(momentum) is _DefaultMomentum and convention == "torch":
        return (0.9, 0.1)
    if isinstance(momentum, (bool, str, bytes)):
        raise TypeError(
            f"{fn}: momentum must be a number in [0, 1], got {momentum!r}; pass e.g. momentum=0.99"
        )
    if isinstance(momentum, (numbers.Real, np.floating)):
        _check_momentum_range(fn, momentum, np.float64(momentum))
        momentum = float(momentum)
    elif not isinstance(momentum, jax.core.Tracer):
        # A concrete array (NumPy, jax.Array, also closed over under jit):
        # checked like a number. Only traced values go unchecked.
        values = np.asarray(momentum)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise TypeError(
                f"{fn}: momentum must be a real number in [0, 1], got {momentum!r} of dtype "
                f"{values.dtype}; pass e.g. momentum=0.99"
            )
        _check_momentum_range(fn, momentum, values)
    return (1 - momentum, momentum) if convention == "torch" else (momentum, 1 - momentum)


def _check_momentum_range(fn: str, momentum, values) -> None:
    """Raise ``ValueError`` unless every value lies in ``[0, 1]`` (NaN does not)."""
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError(
            f"{fn}: momentum must lie in [0, 1], got momentum={momentum!r}; "
            f"the Flax convention uses a decay such as 0.99, PyTorch's an update weight such as 0.1"
        )


def check_stats(fn: str, stats, channels: int, x_shape, *, allow_complex: bool = False) -> BatchStats:
    """Check ``stats`` is a BatchStats-like pair of ``(C,)`` arrays.

    With ``allow_complex`` (complex inputs) the mean may be complex; the
    variance is always real.
    """
    if not isinstance(stats, tuple) or len(stats) not in (2, 3):
        raise TypeError(
            f"{fn}: stats must be a jaxnorm.BatchStats(mean, var), got "
            f"{type(stats).__name__}; create one with jaxnorm.BatchStats.init({channels})"
        )
    stats = BatchStats(*stats)
    for name in ("mean", "var"):
        value = getattr(stats, name)
        if isinstance(value, (list, tuple)):
            raise TypeError(
                f"{fn}: stats.{name} must be an array, got a Python {type(value).__name__}; "
                f"convert it first, e.g. jnp.asarray(stats.{name}), or use jaxnorm.BatchStats.init({channels})"
            )
        shape = tuple(np.shape(value))
        if shape != (channels,):
            raise ValueError(
                f"{fn}: stats.{name} must have shape ({channels},) for an input of "
                f"shape {tuple(x_shape)} with {channels} channels, got shape {shape}; "
                f"create matching stats with jaxnorm.BatchStats.init({channels})"
            )
        dtype = jnp.result_type(value)
        complex_mean = allow_complex and name == "mean" and jnp.issubdtype(dtype, jnp.complexfloating)
        if not (jnp.issubdtype(dtype, jnp.floating) or complex_mean):
            kind = "real floating point" if jnp.issubdtype(dtype, jnp.complexfloating) else "floating point"
            raise TypeError(
                f"{fn}: stats.{name} must be {kind}, got dtype "
                f"{dtype}; cast it, e.g. stats.{name}.astype(jnp.float32)"
            )
    if stats.count is not None and np.shape(stats.count) != ():
        raise ValueError(
            f"{fn}: stats.count must be a scalar (batches seen) or None, got shape "
            f"{np.shape(stats.count)}"
        )
    return stats


def update_stats(
    stats: BatchStats, mean, var, count, *, weights, unbiased: bool, fn: str
) -> BatchStats:
    """Fold one batch's ``mean`` and biased ``var`` (over ``count`` entries) in.

    ``weights`` is ``(keep, weight)`` from :func:`resolve_momentum` (None: the
    cumulative average, which needs ``stats.count``). With ``unbiased`` the
    variance is stored as ``var·n/(n − 1)`` (PyTorch). A batch of no entries
    (``count == 0``) changes nothing.
    """
    batches = None if stats.count is None else stats.count + 1
    if weights is None:
        if stats.count is None:
            raise ValueError(
                f"{fn}: momentum=None (cumulative average) needs the number of batches "
                f"seen, but stats.count is None; create stats with "
                f"jaxnorm.BatchStats.init(num_features)"
            )
        weight = 1.0 / batches.astype(jnp.result_type(stats.mean))
        weights = (1 - weight, weight)
    keep, weight = weights
    if unbiased:
        var = var * count / jnp.maximum(count - 1, 1)
    seen = count > 0
    new = []
    for old, batch in ((stats.mean, mean), (stats.var, var)):
        # A complex batch mean makes a real running mean complex (flax.linen's
        # arithmetic: momentum·old + (1 − momentum)·mean).
        dtype = old.dtype
        if jnp.iscomplexobj(batch) and not jnp.iscomplexobj(old):
            dtype = jnp.promote_types(dtype, batch.dtype)
        old = old.astype(dtype)
        updated = keep * old + weight * batch.astype(dtype)
        new.append(jnp.where(seen, updated, old).astype(dtype))
    if batches is not None:
        batches = jnp.where(jnp.any(seen), batches, stats.count).astype(jnp.result_type(stats.count))
    return BatchStats(new[0], new[1], batches)
