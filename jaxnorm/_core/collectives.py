"""The one collective the BatchNorm family needs: gathering per-member moments.

``lax.all_gather`` works under ``vmap``, ``pmap`` and ``shard_map``, but under
``shard_map`` (with its default replication checks) its result is typed as
varying across the axis even though every member holds the same values, so
running statistics computed from it could not be returned with
``out_specs=P()``. There JAX's invariant all-gather is used instead: the same
collective, typed as replicated. It is not yet public API, so it is looked
up defensively and the plain all-gather is the fallback.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import jax
from jax import lax

try:  # JAX >= 0.8: same collective, result typed as replicated.
    from jax._src.lax.parallel import all_gather_invariant as _all_gather_invariant
except ImportError:  # pragma: no cover - older or newer JAX
    _all_gather_invariant = None

__all__ = ["all_gather"]


def _varying_over(t, axis_name) -> bool:
    """Whether ``t`` is typed as varying over ``axis_name`` (inside shard_map)."""
    manual = getattr(jax.typeof(t), "manual_axis_type", None)
    varying = getattr(manual, "varying", ())
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    return any(name in varying for name in names)


def all_gather(t: jax.Array, axis_name, axis_index_groups=None) -> jax.Array:
    """Stack every member's ``t`` along a new leading axis, on every member."""
    if axis_index_groups is None and _all_gather_invariant is not None and _varying_over(t, axis_name):
        return _all_gather_invariant(t, axis_name)
    return lax.all_gather(t, axis_name, axis_index_groups=axis_index_groups)
