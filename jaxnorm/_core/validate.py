"""Trace-time argument checks shared by every jaxnorm function.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the
calling function, what it expected, what it received and how to fix it. All
checks look only at shapes, dtypes and Python values, so they run at trace
time: under ``jax.jit`` and ``jax.vmap`` as well as eagerly.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "canonical_axes",
    "canonical_axis",
    "check_array",
    "check_epsilon",
    "check_floating",
    "check_masked_output",
    "check_min_rank",
    "check_param",
    "check_positive_int",
    "check_training",
    "check_where",
]


def check_floating(fn: str, x) -> jax.Array:
    """Return ``x`` as an array, raising ``TypeError`` unless it is floating."""
    check_array(fn, "x", x)
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{fn}: expected a floating-point input, got dtype {dtype} "
            f"(shape {np.shape(x)}); cast it first, e.g. x.astype(jnp.float32)"
        )
    return jnp.asarray(x)


def canonical_axis(fn: str, axis, ndim: int, shape, *, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, checking it lies in ``[-ndim, ndim)``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(
            f"{fn}: {name} must be an int, got {axis!r} of type "
            f"{type(axis).__name__}; pass e.g. {name}=-1"
        )
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{fn}: {name}={axis} is out of range for an input of rank {ndim} "
            f"(shape {tuple(shape)}); use a value in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def canonical_axes(fn: str, axes, ndim: int, shape, *, name: str = "axis") -> tuple[int, ...]:
    """Return ``axes`` (an int or a sequence of ints) sorted and non-negative.

    Raises if any axis is out of range, if two name the same axis, or if the
    sequence is empty.
    """
    if isinstance(axes, Sequence) and not isinstance(axes, str):
        seq = tuple(axes)
        if not seq:
            raise ValueError(
                f"{fn}: {name} must name at least one axis, got {axes!r}; "
                f"pass e.g. {name}=-1"
            )
    else:
        seq = (axes,)
    canon = tuple(canonical_axis(fn, a, ndim, shape, name=name) for a in seq)
    if len(set(canon)) != len(canon):
        raise ValueError(
            f"{fn}: {name}={tuple(seq)} names the same axis more than once for an "
            f"input of rank {ndim} (shape {tuple(shape)}); list each axis once"
        )
    return tuple(sorted(canon))


def check_min_rank(fn: str, x, min_rank: int, layout: str, fix: str) -> None:
    """Raise ``ValueError`` if ``x`` has fewer than ``min_rank`` dimensions."""
    if x.ndim < min_rank:
        raise ValueError(
            f"{fn}: expected an input of rank >= {min_rank} ({layout}), got shape "
            f"{tuple(x.shape)} of rank {x.ndim}; {fix}"
        )


def check_positive_int(fn: str, name: str, value, *, example: int = 1, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising unless it is an integer >= ``minimum`` (1)."""
    need = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: {name} must be {need}, got {value!r} of type "
            f"{type(value).__name__}; pass e.g. {name}={example}"
        )
    if value < minimum:
        raise ValueError(
            f"{fn}: {name} must be {need}, got {name}={value}; "
            f"pass e.g. {name}={example}"
        )
    return int(value)


def check_epsilon(fn: str, epsilon) -> float:
    """Return ``epsilon`` as a float, checking it is a finite number >= 0.

    It must be concrete (a Python or NumPy number, not a traced value):
    it is a setting of the function, not a differentiable input.
    """
    if isinstance(epsilon, (bool, str, bytes)):
        raise TypeError(
            f"{fn}: epsilon must be a number, got {epsilon!r} of type "
            f"{type(epsilon).__name__}; pass a Python float such as 1e-5"
        )
    try:
        value = float(epsilon)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"{fn}: epsilon must be a concrete number, got {epsilon!r}; pass a "
            f"Python float such as 1e-5 (not a traced array)"
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{fn}: epsilon must be a finite number >= 0, got epsilon={epsilon!r}; "
            f"the usual value is 1e-5"
        )
    return value


def check_param(fn: str, name: str, value, allowed: dict[str, tuple[int, ...]], x_shape, *,
                allow_complex: bool = False):
    """Check a scale/bias-like parameter against the shapes it may have.

    Args:
      fn: name of the calling function, for the message.
      name: the parameter's name, e.g. ``"scale"``.
      value: the parameter, or None.
      allowed: description -> shape, e.g. ``{"per channel": (C,),
        "per example": (N, C)}``; shapes are matched exactly, never broadcast.
      x_shape: the input's shape, for the message.
      allow_complex: accept a complex parameter too (complex inputs).

    Returns:
      ``(array, description)`` with the matched description, or ``(None, None)``.

    Raises:
      TypeError: if the parameter is not floating point (or complex, where allowed).
      ValueError: if its shape is none of the allowed ones.
    """
    if value is None:
        return None, None
    check_array(fn, name, value)
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or allow_complex and jnp.issubdtype(dtype, jnp.complexfloating)):
        raise TypeError(
            f"{fn}: {name} must be floating point, got dtype {dtype}; "
            f"cast it, e.g. {name}.astype(jnp.float32)"
        )
    shape = tuple(np.shape(value))
    for description, want in allowed.items():
        if shape == tuple(want):
            return jnp.asarray(value), description
    options = " or ".join(f"{tuple(s)} ({d})" for d, s in allowed.items())
    raise ValueError(
        f"{fn}: {name} must have shape {options} for an input of shape "
        f"{tuple(x_shape)}, got shape {shape}; shapes are matched exactly, never "
        f"broadcast, so reshape {name} to one of these"
    )


def check_where(fn: str, where, x_shape):
    """Check a boolean mask that broadcasts to the input; return it with the input's rank.

    Any shape NumPy broadcasting takes to ``x_shape`` is accepted: fewer
    axes (aligned on the trailing ones, e.g. a ``(C,)`` channel mask for an
    ``(N, C)`` input) or size-1 axes. The mask is returned with size-1
    axes prepended to ``x``'s rank (not expanded to ``x``'s size).

    Returns:
      The mask as a boolean array of ``x``'s rank, or None.

    Raises:
      TypeError: if the mask is not boolean.
      ValueError: if it does not broadcast to ``x_shape``.
    """
    if where is None:
        return None
    check_array(fn, "where", where)
    dtype = jnp.result_type(where)
    if dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: where must be a boolean mask, got dtype {dtype}; pass e.g. "
            f"where=(mask != 0)"
        )
    shape = tuple(np.shape(where))
    x_shape = tuple(x_shape)
    ok = len(shape) <= len(x_shape) and all(
        w in (1, s) for w, s in zip(shape[::-1], x_shape[::-1])
    )
    if not ok:
        raise ValueError(
            f"{fn}: where must broadcast to the input's shape {x_shape} (each of its "
            f"trailing axes equal to the input's or 1, rank at most {len(x_shape)}), got "
            f"shape {shape}; e.g. a mask of shape {x_shape[-1:]} selects along the last "
            f"axis, and size-1 axes (mask[..., None]) place a mask on other axes"
        )
    where = jnp.asarray(where)
    if len(shape) < len(x_shape):
        where = jnp.reshape(where, (1,) * (len(x_shape) - len(shape)) + shape)
    return where


def check_array(fn: str, name: str, value) -> None:
    """Raise ``TypeError`` for a Python list or tuple where an array is expected.

    JAX refuses them too (they are ambiguous under its transformations), but
    with a bare "Cannot determine dtype"; this names the function and the fix.
    """
    if isinstance(value, (list, tuple)):
        raise TypeError(
            f"{fn}: {name} must be an array, got a Python {type(value).__name__}; "
            f"convert it first, e.g. {name}=jnp.asarray({name})"
        )


def check_training(fn: str, training) -> bool:
    """Return ``training`` as a Python bool; a NumPy bool is accepted, nothing else.

    It must be concrete: it selects the statistics at trace time.
    """
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: training must be a Python bool, got {training!r} of type "
            f"{type(training).__name__}; pass training=True to use and update the "
            f"batch statistics, training=False to use the running ones"
        )
    return bool(training)


MASKED_OUTPUTS = ("zero", "normalized")


def check_masked_output(fn: str, masked_output) -> str:
    """Return ``masked_output`` after checking it is ``"zero"`` or ``"normalized"``."""
    if not isinstance(masked_output, str) or masked_output not in MASKED_OUTPUTS:
        raise ValueError(
            f"{fn}: masked_output must be 'zero' or 'normalized', got {masked_output!r}; "
            f"'zero' (default) outputs 0 at masked entries, 'normalized' normalizes them with "
            f"the selected entries' statistics (as flax's modules do)"
        )
    return masked_output
