"""What a function keeps for its backward pass, and what XLA allocates for it.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax

__all__ = ["residual_bytes", "temp_bytes"]


def residual_bytes(apply, *args) -> int:
    """Bytes of the residuals ``jax.vjp`` keeps between forward and backward.

    The residuals are the arrays the VJP closure holds (each counted once,
    the input itself included when it is kept), from a jitted forward pass.
    """
    _, vjp_fn = jax.vjp(jax.jit(apply), *args)
    leaves = {id(leaf): leaf for leaf in jax.tree_util.tree_leaves(vjp_fn) if hasattr(leaf, "nbytes")}
    return int(sum(leaf.nbytes for leaf in leaves.values()))


def temp_bytes(jitted, *args) -> int | None:
    """XLA's temporary allocation for the compiled ``jitted(*args)`` (None if unreported)."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)
