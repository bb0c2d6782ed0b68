"""Per-example statistics over feature, spatial and channel-group axes.

- :mod:`~jaxnorm._schemes.per_example.layer_norm`: LayerNorm and RMSNorm.
- :mod:`~jaxnorm._schemes.per_example.group_norm`: GroupNorm and InstanceNorm.
- :mod:`~jaxnorm._schemes.per_example.channel_setup`: the argument checks
  of every scheme with a batch axis, a channel axis and spatial axes
  (GroupNorm, InstanceNorm, FRN, EvoNorm-S0).

Uses: no other jaxnorm module.
"""
