"""Memory traffic: the elementwise-copy rate of this machine and what a norm must move.

A normalization is memory-bound: its floor is the time to move the bytes it
cannot avoid. Forward, that is reading ``x`` and writing ``y`` (2 × the
input's bytes); forward+backward, reading ``x`` and the cotangent and
writing ``dx`` (3 ×; the per-set statistics and the parameters are small).
Achieved rates are those bytes over the measured time, next to the rate of
an elementwise pass ``y = x·a + b`` (read and write once) on the same array.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["FWD_BWD_PASSES", "FWD_PASSES", "copy_pass"]

FWD_PASSES = 2
FWD_BWD_PASSES = 3


def copy_pass(x):
    """A zero-argument call of a jitted elementwise pass ``x·a + b`` (reads and writes ``x`` once).

    Time it interleaved with the functions it is compared with, so that it
    meets the same allocator and cache state.
    """
    fn = jax.jit(lambda t: t * jnp.asarray(1.5, t.dtype) + jnp.asarray(0.5, t.dtype))
    return lambda: fn(x)

