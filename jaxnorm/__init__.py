"""jaxnorm: every neural-network normalization scheme for JAX.

Pure functions that jit, vmap, differentiate in both modes and shard, with
statistics that stay exact at any mean. ``import jaxnorm as jn``.
"""

from jaxnorm._batch_norm import batch_norm
from jaxnorm._batch_renorm import batch_renorm, batch_renorm_schedule
from jaxnorm._batch_stats import BatchStats
from jaxnorm._evonorm import evonorm_b0, evonorm_s0
from jaxnorm._filter_response import filter_response_norm
from jaxnorm._folding import fold_batch_norm
from jaxnorm._group_norm import group_norm, instance_norm
from jaxnorm._layer_norm import layer_norm, rms_norm
from jaxnorm._local_response import local_response_norm
from jaxnorm._representative import RBNCalibration, representative_batch_norm
from jaxnorm._spectral_norm import spectral_norm, spectral_norm_init, spectral_norm_sigma
from jaxnorm._switchable import switchable_norm
from jaxnorm._weight_norm import weight_norm, weight_norm_init
from jaxnorm._weight_standardize import weight_standardize

__version__ = "0.1.0"

__all__ = [
    "BatchStats",
    "RBNCalibration",
    "batch_norm",
    "batch_renorm",
    "batch_renorm_schedule",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "fold_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "representative_batch_norm",
    "rms_norm",
    "spectral_norm",
    "spectral_norm_init",
    "spectral_norm_sigma",
    "switchable_norm",
    "weight_norm",
    "weight_norm_init",
    "weight_standardize",
]
