"""What every jaxnorm.linen module shares: parameters, dtypes and the training flag.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

__all__ = [
    "affine_params", "as_mask", "axes_tuple", "merge_training", "no_axis_name", "output_dtype", "running_stats",
    "single_axis",
]


def affine_params(module: nn.Module, shape, *, scale_name="scale", bias_name="bias"):
    """The module's ``scale`` and ``bias`` parameters of ``shape`` (None when disabled)."""
    scale = module.param(scale_name, module.scale_init, shape, module.param_dtype) if module.use_scale else None
    bias = module.param(bias_name, module.bias_init, shape, module.param_dtype) if getattr(module, "use_bias", False) else None
    return scale, bias


def output_dtype(dtype, x, *params):
    """flax.linen's rule: ``dtype`` if given, else ``x`` promoted with the parameters.

    Returns ``(x, dtype)`` with ``x`` cast up to ``dtype`` when that is wider,
    so that the core computes in (at least) the dtype flax.linen would.
    """
    if dtype is None:
        dtype = jnp.result_type(x, *(p for p in params if p is not None))
    dtype = jnp.dtype(dtype)
    if jnp.promote_types(x.dtype, dtype) == dtype:
        x = x.astype(dtype)
    return x, dtype


def running_stats(module: nn.Module, shape, dtype=jnp.float32):
    """The ``batch_stats`` variables ``mean`` (zeros) and ``var`` (ones) of ``shape`` (``(C,)``)."""
    shape = tuple(shape)
    mean = module.variable("batch_stats", "mean", lambda: jnp.zeros(shape, dtype))
    var = module.variable("batch_stats", "var", lambda: jnp.ones(shape, dtype))
    return mean, var


def axes_tuple(cls_name: str, name: str, axes, ndim: int, shape) -> tuple[int, ...]:
    """``axes`` (an int or a sequence of ints) as sorted non-negative axes, each once.

    Repeated axes are merged, as flax does; an axis out of range raises.
    """
    seq = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    for a in seq:
        if isinstance(a, bool) or not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(
                f"{cls_name}: {name}={axes!r} names {a!r}, which is not an axis of an input of "
                f"shape {tuple(shape)}; use ints in [{-ndim}, {ndim - 1}]"
            )
    return tuple(sorted({a % ndim for a in seq}))


def as_mask(mask):
    """A module's ``mask`` as a boolean array (flax converts any mask with ``jnp.asarray(mask, bool)``), or None."""
    return None if mask is None else jnp.asarray(mask, dtype=bool)


def single_axis(cls_name: str, name: str, axes, ndim: int, shape) -> int:
    """``axes`` as one non-negative axis (an int or a 1-tuple), with a clear error otherwise."""
    if isinstance(axes, (tuple, list)):
        if len(axes) != 1:
            raise NotImplementedError(
                f"{cls_name}: {name}={tuple(axes)} names several feature axes; jaxnorm "
                f"normalizes with one channel axis, so merge them with a reshape first"
            )
        axes = axes[0]
    if isinstance(axes, bool) or not isinstance(axes, int) or not -ndim <= axes < ndim:
        raise ValueError(
            f"{cls_name}: {name}={axes!r} is not an axis of an input of shape {tuple(shape)}; "
            f"use an int in [{-ndim}, {ndim - 1}]"
        )
    return axes % ndim


def merge_training(attribute, argument) -> bool:
    """``use_running_average`` from the constructor or the call (exactly one of them)."""
    return nn.merge_param("use_running_average", attribute, argument)


def no_axis_name(cls_name: str, axis_name):
    if axis_name is not None:
        raise NotImplementedError(
            f"{cls_name}: axis_name={axis_name!r} (statistics across devices) is supported by "
            f"the BatchNorm family only; shard the batch with jax.jit and NamedSharding instead"
        )

