"""jaxnorm: every neural-network normalization scheme for JAX.

Pure functions that jit, vmap, differentiate in both modes and shard, with
statistics that stay exact at any mean. ``import jaxnorm as jn``.

Uses: jaxnorm._schemes (switchable), jaxnorm._schemes.batch (batch_norm,
folding, renorm, representative, running_stats), jaxnorm._schemes.local
(evonorm_b0, evonorm_s0, filter_response, local_response),
jaxnorm._schemes.per_example (group_norm, layer_norm), jaxnorm._schemes.weight
(spectral_norm, weight_norm, weight_standardize).
"""

# The BatchNorm family: statistics over the batch, running statistics.
from jaxnorm._schemes.batch.batch_norm import batch_norm
from jaxnorm._schemes.batch.folding import fold_batch_norm
from jaxnorm._schemes.batch.renorm import batch_renorm, batch_renorm_schedule
from jaxnorm._schemes.batch.representative import RBNCalibration, representative_batch_norm
from jaxnorm._schemes.batch.running_stats import BatchStats
# Per-example statistics over feature axes, spatial axes and channel groups.
from jaxnorm._schemes.per_example.group_norm import group_norm, instance_norm
from jaxnorm._schemes.per_example.layer_norm import layer_norm, rms_norm
# Local and gated schemes: windows, per-channel responses, EvoNorm.
from jaxnorm._schemes.local.evonorm_b0 import evonorm_b0
from jaxnorm._schemes.local.evonorm_s0 import evonorm_s0
from jaxnorm._schemes.local.filter_response import filter_response_norm
from jaxnorm._schemes.local.local_response import local_response_norm
# A learned mixture of IN, LN and BN statistics.
from jaxnorm._schemes.switchable import switchable_norm
# Weight reparametrizations: a kernel normalized, not an activation.
from jaxnorm._schemes.weight.spectral_norm import spectral_norm, spectral_norm_init, spectral_norm_sigma
from jaxnorm._schemes.weight.weight_norm import weight_norm, weight_norm_init
from jaxnorm._schemes.weight.weight_standardize import weight_standardize

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
