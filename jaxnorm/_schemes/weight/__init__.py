"""Weight reparametrizations: a kernel normalized, not an activation.

- :mod:`~jaxnorm._schemes.weight.weight_norm`: Weight Normalization.
- :mod:`~jaxnorm._schemes.weight.spectral_norm`: Spectral Normalization.
- :mod:`~jaxnorm._schemes.weight.weight_standardize`: Weight Standardization.
- :mod:`~jaxnorm._schemes.weight.weight_setup`: their shared argument checks.

Uses: no other jaxnorm module.
"""
