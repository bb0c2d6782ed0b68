"""A measured floor under a normalization's forward+backward on XLA: the reductions it cannot avoid, bare.

Whatever program computes the gradients of ``sum(norm(x)·g)`` with respect
to ``x``, scale and bias, it must reduce, on a backend that gives every
reduction its own kernel (XLA:CPU: ``benchmarks/studies/shift_cost.py`` shows that
asking for ``Σx`` and ``Σx²`` together still reads ``x`` twice):

* the statistics: ``Σx`` and ``Σx²`` per set (RMSNorm: ``Σx²``);
* the backward's sums ``Σg`` and ``Σg·x`` (RMSNorm: ``Σg·x``). For
  InstanceNorm and BatchNorm they are per set and also give ``dscale`` and
  ``dbias``. GroupNorm needs them per example and channel (``dscale`` has a
  channel's resolution, each example its own statistics) and pools them,
  and its statistics, into groups: it reduces as InstanceNorm does. For
  LayerNorm and RMSNorm, whose sets are rows, the per-row sums can fuse into
  the ``dx`` pass and are left out, but ``dscale`` and ``dbias`` are sums over
  the rows (column reductions) that nothing else provides.

:func:`floor_program` is those reductions and nothing else, each bare (no
shift, no statistics broadcast back), with small outputs. It leaves out the
``dx`` pass (reading ``x`` and ``g``, writing ``dx``), which every program
also runs, so it is less work than any program built from XLA's kernels;
its time over flax.linen's estimates the lowest ratio jaxnorm can reach
(an estimate: a kernel's speed can depend on what runs around it).

Uses: no other jaxnorm module.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["FLOOR_SCHEMES", "floor_program"]

FLOOR_SCHEMES = ("layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm")


def floor_program(scheme: str, shape: tuple[int, ...]) -> Callable:
    """The jitted bare reductions any forward+backward of ``scheme`` on ``shape`` must run.

    Args:
      scheme: one of :data:`FLOOR_SCHEMES`, channels last.
      shape: the input's shape.

    Returns:
      ``f(x, g)``: a jitted function of the input and the cotangent returning
      the sums (small arrays).

    Raises:
      ValueError: for a scheme without a floor.
    """
    if scheme not in FLOOR_SCHEMES:
        raise ValueError(f"floor_program: no floor for scheme {scheme!r}; expected one of {FLOOR_SCHEMES}")
    ndim = len(shape)
    all_but_channels = tuple(range(ndim - 1))
    per_set = {
        "layer_norm": lambda t: jnp.sum(t, axis=-1),
        "rms_norm": lambda t: jnp.sum(t, axis=-1),
        "batch_norm": lambda t: jnp.sum(t, axis=all_but_channels),
    }.get(scheme, lambda t: jnp.sum(t, axis=tuple(range(1, ndim - 1))))  # per example and channel
    over_rows = lambda t: jnp.sum(t, axis=all_but_channels)

    def program(x, g):
        if scheme == "rms_norm":
            return per_set(x * x), over_rows(g * x)
        if scheme == "layer_norm":
            return per_set(x), per_set(x * x), over_rows(g), over_rows(g * x)
        return per_set(x), per_set(x * x), per_set(g), per_set(g * x)

    return jax.jit(program)
