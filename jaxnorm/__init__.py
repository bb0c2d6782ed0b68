"""jaxnorm: every neural-network normalization scheme for JAX.

Pure functions that jit, vmap, differentiate in both modes and shard, with
statistics that stay exact at any mean. ``import jaxnorm as jn``.
"""

from jaxnorm._group_norm import group_norm, instance_norm
from jaxnorm._layer_norm import layer_norm, rms_norm

__version__ = "0.1.0"

__all__ = [
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
]
