"""Schemes with a window, a gate or a per-channel response, normalization and activation in one.

- :mod:`~jaxnorm._schemes.local.local_response`: Local Response Normalization.
- :mod:`~jaxnorm._schemes.local.filter_response`: Filter Response
  Normalization with its thresholded linear unit.
- :mod:`~jaxnorm._schemes.local.evonorm_s0`: EvoNorm-S0 (batch-independent).
- :mod:`~jaxnorm._schemes.local.evonorm_b0`: EvoNorm-B0 (batch and
  per-example deviations; BatchNorm's running variance).

Uses: no other jaxnorm module.
"""
