"""flax.linen modules for every jaxnorm scheme: thin wrappers around the core.

Each module declares its variables (parameters ``scale``/``bias``, running
statistics ``mean``/``var`` in the ``batch_stats`` collection) and calls one
jaxnorm function. Where flax.linen has a module of the same name, these take
the same fields and call arguments with the same defaults, so swapping
``from flax import linen as nn`` for ``from jaxnorm import linen`` at those
names gives the same numbers (exact statistics included). Needs flax
(``pip install 'jaxnorm[flax]'``).

Uses: jaxnorm.linen (_batch, _per_example, _weights).
"""

from jaxnorm.linen._batch import BatchNorm, BatchRenorm, EvoNormB0, RepresentativeBatchNorm, SwitchableNorm
from jaxnorm.linen._per_example import (
    EvoNormS0,
    FilterResponseNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LocalResponseNorm,
    RMSNorm,
)
from jaxnorm.linen._weights import SpectralNorm, StandardizedConv, WeightNorm

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LocalResponseNorm",
    "RMSNorm",
    "RepresentativeBatchNorm",
    "SpectralNorm",
    "StandardizedConv",
    "SwitchableNorm",
    "WeightNorm",
]
