"""flax.nnx modules for every jaxnorm scheme: thin wrappers around the core.

Each module holds its parameters (``nnx.Param``: ``scale``, ``bias`` and the
scheme's extra ones) and running statistics (``nnx.BatchStat`` ``mean`` and
``var``) and calls one jaxnorm function. Where flax.nnx has a module of the
same name (BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm), these take
the same constructor and call arguments with the same defaults and hold the
same variables, so swapping ``from flax import nnx`` for
``from jaxnorm import nnx`` at those names gives the same numbers (exact
statistics included). ``model.train()`` / ``model.eval()`` and ``nnx.view``
switch the BatchNorm family's ``use_running_average``. Needs flax
(``pip install 'jaxnorm[flax]'``).

Uses: jaxnorm.nnx (_batch, _per_example, _weights).
"""

from jaxnorm.nnx._batch import (
    BatchNorm,
    BatchRenorm,
    EvoNormB0,
    RepresentativeBatchNorm,
    SwitchableNorm,
)
from jaxnorm.nnx._per_example import (
    EvoNormS0,
    FilterResponseNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LocalResponseNorm,
    RMSNorm,
)
from jaxnorm.nnx._weights import SpectralNorm, StandardizedConv, WeightNorm

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
