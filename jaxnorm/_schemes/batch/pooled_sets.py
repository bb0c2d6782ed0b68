"""The sets of a scheme that pools InstanceNorm moments into BatchNorm ones.

Uses: jaxnorm._core (moments), jaxnorm._schemes.batch (batch_setup).
"""

from __future__ import annotations

import dataclasses

from jax import lax

from jaxnorm._core.moments import Reduction
from jaxnorm._schemes.batch.batch_setup import BatchSetup

__all__ = ["PooledSpec", "frozen", "pooled_spec"]


@dataclasses.dataclass(frozen=True)
class PooledSpec:
    """Static settings of a closed-form core built on InstanceNorm moments (EvoNorm-B0, RBN).

    Attributes:
      spatial: the axes of one InstanceNorm set (one example's channel).
      batch_axes: the axes IN sets are pooled over into BatchNorm sets.
      epsilon: added to the variances.
      training: batch statistics (True) or the running ones.
      axis_name, axis_index_groups: BN sets extend across this named axis.
    """

    spatial: tuple[int, ...]
    batch_axes: tuple[int, ...]
    epsilon: float
    training: bool
    axis_name: object = None
    axis_index_groups: tuple | None = None

    def instance(self) -> Reduction:
        """The InstanceNorm sets."""
        return Reduction(self.spatial)

    def batch(self) -> Reduction:
        """The IN sets of one channel, pooled over the batch and the devices: the BN sets."""
        return Reduction(self.batch_axes, axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)


def pooled_spec(s: BatchSetup, spatial: tuple[int, ...], training: bool, cls=PooledSpec, **extra) -> PooledSpec:
    """The :class:`PooledSpec` (or subclass ``cls``, with its ``extra`` fields) of a validated call whose IN sets span ``spatial``."""
    rest = tuple(a for a in range(s.x.ndim) if a not in spatial and a != s.channel_axis)
    return cls(spatial, rest, s.epsilon, training, s.reduction.axis_name, s.reduction.axis_index_groups, **extra)


def frozen(batch) -> tuple:
    """Batch moments as outputs without derivative (for the running statistics); ``()`` for None."""
    return () if batch is None else tuple(lax.stop_gradient(t) for t in batch)
