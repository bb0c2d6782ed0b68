"""The normalization schemes, one folder per family, each function built on the core.

- :mod:`~jaxnorm._schemes.batch`: the BatchNorm family, statistics over the
  batch and running statistics: BatchNorm and Ghost BatchNorm, Batch
  Renormalization, Representative BatchNorm, folding into a layer.
- :mod:`~jaxnorm._schemes.per_example`: statistics per example over
  feature, spatial and channel-group axes: LayerNorm, RMSNorm, GroupNorm,
  InstanceNorm.
- :mod:`~jaxnorm._schemes.local`: per-example schemes with a window, a
  gate or a per-channel response: Local Response Normalization, Filter
  Response Normalization, EvoNorm-S0 and EvoNorm-B0 (B0 keeps BatchNorm's
  running variance).
- :mod:`~jaxnorm._schemes.weight`: a kernel normalized, not an activation:
  Weight Normalization, Spectral Normalization, Weight Standardization.
- :mod:`~jaxnorm._schemes.switchable`: Switchable Normalization, a learned
  mixture of IN, LN and BN statistics.

A scheme module may import JAX, :mod:`jaxnorm._core`, :mod:`jaxnorm._lowering`,
its own family, and the BatchNorm family's set-up, running statistics and
pooled sets (for schemes that keep running statistics) or the per-example
family's channel set-up; never ``jaxnorm`` itself, a Flax front end or the
benchmarks.

Uses: no other jaxnorm module.
"""
