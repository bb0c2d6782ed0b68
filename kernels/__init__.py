"""jaxnorm_kernels: Triton kernels for grouped normalization (GroupNorm, InstanceNorm, LayerNorm, RMSNorm).

Installed from the repository's ``kernels/`` folder under this name. It
imports triton, and jax/jax_triton or torch only in the modules that run
kernels on those arrays; it never imports jaxnorm.

* :mod:`~jaxnorm_kernels.group_norm_triton`: the ``@triton.jit`` kernels.
* :mod:`~jaxnorm_kernels.plan`: the ``(N, S, C)`` view, tiles and grid.
* :mod:`~jaxnorm_kernels.launches`: the launches of a forward or backward pass.
* :mod:`~jaxnorm_kernels.torch_ops`: running them on PyTorch tensors.
* :mod:`~jaxnorm_kernels.jax_ops`: the JAX binding (jax_triton, custom VJP).
"""
