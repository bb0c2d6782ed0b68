"""jaxnorm: every neural-network normalization scheme for JAX.

Pure functions that jit, vmap, differentiate in both modes and shard, with
statistics that stay exact at any mean. ``import jaxnorm as jn``.
"""

from jaxnorm._batch_norm import batch_norm
from jaxnorm._batch_renorm import batch_renorm, batch_renorm_schedule
from jaxnorm._batch_stats import BatchStats
from jaxnorm._folding import fold_batch_norm
from jaxnorm._group_norm import group_norm, instance_norm
from jaxnorm._layer_norm import layer_norm, rms_norm
from jaxnorm._representative import RBNCalibration, representative_batch_norm

__version__ = "0.1.0"

__all__ = [
    "BatchStats",
    "RBNCalibration",
    "batch_norm",
    "batch_renorm",
    "batch_renorm_schedule",
    "fold_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "representative_batch_norm",
    "rms_norm",
]
