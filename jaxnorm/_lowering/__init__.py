"""How a piece of the core compiles, per platform: the choices kept out of the math.

- :mod:`~jaxnorm._lowering.per_platform`: one primitive that carries a
  piece's CPU program and its accelerator program (XLA:GPU, XLA:TPU), each
  lowered for its platform, with no conditional in either.
- :mod:`~jaxnorm._lowering.xla_cpu`: the CPU program's arrangements
  (views, the textbook/shifted switch, YNNPACK thresholds).
- :mod:`~jaxnorm._lowering.triton_dispatch`: ``implementation="xla"`` or
  ``"triton"``, and the binding to the optional ``jaxnorm_kernels``.

May import JAX, :mod:`jaxnorm._core.reduction` (plain data: the sets and
their moments) and ``jaxnorm_kernels``; never a scheme or a front end.

Uses: no other jaxnorm module.
"""
