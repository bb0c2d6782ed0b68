"""What every jaxnorm.nnx module shares: parameters, dtypes, the training flag.

The dtype rule, the axis checks and the errors for ``axis_name`` come from
:mod:`jaxnorm.linen._common`, so both front ends agree.

Uses: jaxnorm.linen (_common).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from jaxnorm.linen._common import no_axis_name, output_dtype, single_axis

__all__ = [
    "DEFAULT_PROMOTE",
    "affine_params",
    "check_features",
    "extra_param",
    "no_axis_name",
    "promote",
    "single_axis",
    "use_running_average",
    "value",
]

#: flax.nnx's default ``promote_dtype``; with it jaxnorm applies its own rule
#: (cast ``x`` up only, so statistics never lose precision).
DEFAULT_PROMOTE = nnx_dtypes.promote_dtype


def affine_params(module, num_features: int, *, use_scale, use_bias, scale_init, bias_init, param_dtype,
                  rngs, scale_metadata=None, bias_metadata=None):
    """Set ``module.scale`` and ``module.bias``: ``nnx.Param`` of shape ``(num_features,)`` or ``None``.

    Keys are drawn from ``rngs.params()`` in flax.nnx's order (scale, then bias),
    so random initializers give the values flax.nnx's modules would.
    """
    shape = (num_features,)
    if use_scale:
        module.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype), **dict(scale_metadata or {}))
    else:
        module.scale = nnx.data(None)
    if use_bias:
        module.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **dict(bias_metadata or {}))
    else:
        module.bias = nnx.data(None)


def extra_param(init, shape, param_dtype, rngs):
    """An extra ``nnx.Param`` (``tau``, ``v``, ...), its key drawn from ``rngs.params()``."""
    return nnx.Param(init(rngs.params(), shape, param_dtype))


def value(variable):
    """The array of an ``nnx.Variable``, or None."""
    return None if variable is None else variable[...]


def promote(module, x, *arrays):
    """``(x, arrays, dtype)``: the inputs for the core call and the output dtype.

    With flax.nnx's default ``promote_dtype``: flax's rule (``module.dtype`` if
    given, else ``x`` promoted with ``arrays``), ``x`` cast up when that is
    wider and never down, ``arrays`` untouched. With a custom ``promote_dtype``
    it is applied to ``(x, *arrays)`` as flax.nnx does, and the output has
    ``module.dtype`` or the promoted type.
    """
    fn = getattr(module, "promote_dtype", DEFAULT_PROMOTE)
    if fn is DEFAULT_PROMOTE:
        x, dtype = output_dtype(module.dtype, jnp.asarray(x), *arrays)
        return x, arrays, dtype
    x, *arrays = fn((x, *arrays), dtype=module.dtype)
    dtype = module.dtype if module.dtype is not None else jnp.result_type(x, *(a for a in arrays if a is not None))
    return x, tuple(arrays), jnp.dtype(dtype)


def use_running_average(module, argument) -> bool:
    """The call argument if given, else the attribute (flax.nnx's precedence)."""
    flag = module.use_running_average if argument is None else argument
    if flag is None:
        name = type(module).__name__
        raise ValueError(
            f"{name}: use_running_average is None both in the constructor and in the call; "
            f"pass use_running_average=True/False to {name}(...) or to the call, or use "
            f"model.train() / model.eval()"
        )
    return bool(flag)


def check_features(name: str, num_features: int, x, axes) -> None:
    """Raise when ``num_features`` is not the size of ``x`` over the feature ``axes``."""
    size = math.prod(x.shape[a] for a in axes)
    if size != num_features:
        raise ValueError(
            f"{name}: num_features={num_features} but the input of shape {tuple(x.shape)} has "
            f"{size} features over axes {tuple(axes)}; construct the module with num_features={size}"
        )
