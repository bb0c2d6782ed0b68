"""Choosing the implementation behind a function: ``"xla"`` or ``"triton"``.

``implementation=None`` (the default) is the pure-JAX ``"xla"`` path on every
platform: the Triton kernels of the optional package ``jaxnorm_kernels``
(``pip install 'jaxnorm[triton]'``) have been tested only through Triton's
interpreter, never compiled for and run on a GPU, so they are opt-in
(``implementation="triton"``) until they pass ``benchmarks/gpu_check.py`` on
a real H100/H200. The choice is never taken from the default backend at
trace time: an explicit ``"triton"`` asks for the kernels, and raises where
they cannot run. ``"xla"`` is the reference the kernels are tested against.

Uses: jaxnorm_kernels (jax_ops), imported on the first call that asks for Triton.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

__all__ = ["IMPLEMENTATIONS", "TRITON_DTYPES", "kernels", "resolve_implementation", "triton_unsupported", "use_triton"]

IMPLEMENTATIONS = (None, "xla", "triton")
TRITON_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def resolve_implementation(fn: str, implementation):
    """Check ``implementation`` (JAX's spelling) and return it.

    Raises:
      ValueError: for a name other than None, ``"xla"`` and ``"triton"``.
    """
    if implementation is None or (isinstance(implementation, str) and implementation in ("xla", "triton")):
        return implementation
    raise ValueError(
        f"{fn}: implementation must be one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}; use implementation=None (the XLA path)"
    )


@functools.lru_cache(maxsize=1)
def kernels():
    """The kernels' JAX binding (``jaxnorm_kernels.jax_ops``), or None when not installed."""
    try:
        from jaxnorm_kernels import jax_ops
    except ImportError:
        return None
    return jax_ops


def use_triton(fn: str, implementation, unsupported: str | None) -> bool:
    """Whether to run the Triton kernels.

    Args:
      fn: the public function's name, for messages.
      implementation: None, ``"xla"`` or ``"triton"`` (already checked).
      unsupported: why the kernels cannot take this call, or None.

    Raises:
      ValueError: ``implementation="triton"`` where the kernels are not
        installed, have no GPU to run on, or do not support the call.
    """
    if implementation in (None, "xla"):
        return False  # None: XLA until the kernels pass the GPU check (module doc)
    ops = kernels()
    launcher = ops.launcher_available() if ops is not None else None
    if ops is None:
        raise ValueError(
            f"{fn}: implementation='triton' needs jaxnorm's Triton kernels, which are not installed; "
            f"pip install 'jaxnorm[triton]', or use implementation=None or 'xla'"
        )
    if launcher is None:
        raise ValueError(
            f"{fn}: implementation='triton' needs a CUDA GPU as JAX's default backend and jax_triton; "
            f"use implementation=None or 'xla' here"
        )
    if unsupported is not None:
        raise ValueError(
            f"{fn}: implementation='triton' does not support {unsupported}; use implementation=None or 'xla'"
        )
    return True


def triton_unsupported(x, params, *, where, per_channel_size: int | None) -> str | None:
    """Why the kernels cannot take this call (None when they can).

    Args:
      x: the input.
      params: ``{name: array or None}`` of the call's parameters.
      where: the mask argument.
      per_channel_size: the length a supported parameter must have (as a
        vector), or None when any shape the function accepts is fine.
    """
    if where is not None:
        return "a mask (where=)"
    if x.dtype not in TRITON_DTYPES:
        return f"dtype {x.dtype} (float32, bfloat16 and float16 only)"
    for name, p in params.items():
        if p is not None and p.size != per_channel_size:
            return f"a per-example {name} of shape {p.shape}"
    return None
