"""The statistics core: what every scheme computes with, and knows no scheme.

- :mod:`~jaxnorm._core.reduction`: the sets (which entries share a mean and
  a variance) and their :class:`~jaxnorm._core.reduction.Moments`.
- :mod:`~jaxnorm._core.moments`: exact moments of any set in one read of
  the data, pooling of small sets into larger ones, tangent sums.
- :mod:`~jaxnorm._core.normalize`: ``(x − μ)·rstd·γ + β`` over a set, with
  its closed-form derivative: where every per-example scheme ends.
- :mod:`~jaxnorm._core.validate`: trace-time argument checks and messages.
- :mod:`~jaxnorm._core.params`: placing ``γ`` and ``β`` against ``x``.
- :mod:`~jaxnorm._core.collectives`: the all-gather across named axes.
- :mod:`~jaxnorm._core.remat`: reverse mode that keeps only ``x`` and the
  statistics.

May import JAX and :mod:`jaxnorm._lowering` (to pick each piece's program
per platform); never a scheme, a Flax front end or the benchmarks.

Uses: no other jaxnorm module.
"""
