"""The BatchNorm family: statistics over the batch (and devices), running statistics.

- :mod:`~jaxnorm._schemes.batch.batch_norm`: BatchNorm and Ghost BatchNorm.
- :mod:`~jaxnorm._schemes.batch.renorm`: Batch Renormalization and its schedule.
- :mod:`~jaxnorm._schemes.batch.representative`: Representative BatchNorm.
- :mod:`~jaxnorm._schemes.batch.folding`: an inference BatchNorm folded into
  the Dense or Conv layer before it.
- :mod:`~jaxnorm._schemes.batch.running_stats`: :class:`~jaxnorm.BatchStats`
  and how a batch updates it (momentum conventions).
- :mod:`~jaxnorm._schemes.batch.batch_setup`: the family's argument checks
  and reduction sets, shared by every batch-statistics scheme.
- :mod:`~jaxnorm._schemes.batch.pooled_sets`: the sets of schemes that pool
  InstanceNorm moments into BatchNorm ones (RBN, EvoNorm-B0, SwitchNorm).

Uses: no other jaxnorm module.
"""
