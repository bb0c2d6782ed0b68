"""What every jaxnorm.linen module shares: parameters, dtypes and the training flag."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

__all__ = ["affine_params", "merge_training", "no_axis_name", "output_dtype", "running_stats", "single_axis"]


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


def running_stats(module: nn.Module, channels: int):
    """The ``batch_stats`` variables ``mean`` (zeros) and ``var`` (ones), float32, ``(C,)``."""
    mean = module.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
    var = module.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
    return mean, var


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

