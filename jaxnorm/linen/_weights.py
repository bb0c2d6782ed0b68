"""flax.linen modules for the weight schemes: wrappers that normalize another layer's kernel.

``WeightNorm`` and ``SpectralNorm`` wrap any layer the way flax.linen's
modules of the same name do (``nn.map_variables`` over the wrapped layer's
variables, seen through a normalizing view), with the same fields, call
arguments and variable names, so checkpoints and training loops written for
flax.linen carry over. ``StandardizedConv`` is ``nn.Conv`` convolving with a
weight-standardized kernel. The normalization itself is jaxnorm's
(:func:`jaxnorm.weight_norm`, :func:`jaxnorm.spectral_norm_sigma`,
:func:`jaxnorm.weight_standardize`).

Uses: jaxnorm.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes as flax_dtypes
from flax.linen import initializers

import jaxnorm as jn

__all__ = ["SpectralNorm", "StandardizedConv", "WeightNorm"]

Axes = Any


def _key_path(module: nn.Module, path) -> str:
    """flax.linen's name for a wrapped variable: ``'Dense_0/kernel'`` (collection dropped)."""
    return module.layer_instance.name + "/" + jax.tree_util.keystr(path[1:], simple=True, separator="/")


def _feature_axes(cls_name: str, axes, value) -> tuple[int, ...] | None:
    """``feature_axes`` for ``value`` as sorted non-negative axes, or None for the whole array."""
    if axes is None:
        return None
    listed = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    if not listed:
        return None
    ndim = value.ndim
    for a in listed:
        if isinstance(a, bool) or not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(
                f"{cls_name}: feature_axes={axes!r} is not a set of axes of the variable of shape "
                f"{tuple(value.shape)}; use ints in [{-ndim}, {ndim - 1}] (-1 for a Flax kernel's "
                f"output features), or None for one norm of the whole variable"
            )
    canonical = tuple(sorted(a % ndim for a in listed))
    if len(set(canonical)) != len(canonical):
        raise ValueError(
            f"{cls_name}: feature_axes={axes!r} names an axis twice for a variable of shape "
            f"{tuple(value.shape)}; list each feature axis once"
        )
    return canonical


class WeightNorm(nn.Module):
    """Weight normalization (Salimans & Kingma 2016), a drop-in for ``flax.linen.WeightNorm``.

    Wraps ``layer_instance`` and gives it, in place of each variable whose
    key path (``'Dense_0/kernel'``) contains one of the strings in
    ``variable_filter`` (all of them when it is empty or None), the kernel
    ``w = g · v / ‖v‖`` of :func:`jaxnorm.weight_norm`: the norm over every
    axis but ``feature_axes``, ``g`` the parameter ``'<path>/scale'`` of
    this module (flax.linen's name and shape, so its checkpoints load).

    Same fields, defaults and call as flax.linen's (``*args, **kwargs`` go
    to the wrapped layer). ``epsilon`` is accepted for compatibility and has
    no effect: flax.linen adds it under its square root, jaxnorm has none
    and gives an all-zero slice ``w = 0`` with finite derivatives instead;
    for other kernels the two agree to rounding (~1e-7 relative in float32).

    Beyond flax.linen:

    * ``exponential=True``: the parameter holds ``log g`` (the paper's
      ``g = e^s``); ``scale_init`` initializes that parameter, so pass
      ``scale_init=nn.initializers.zeros`` to start from ``g = 1``.
    * ``init_from_kernel=True``: ``g`` starts at ``‖v‖``
      (:func:`jaxnorm.weight_norm_init`, ``log ‖v‖`` when exponential), so
      the wrapped layer computes at initialization exactly what it would
      unwrapped (PyTorch's choice); ``scale_init`` is then unused.
      flax.linen's ``g = 1`` stays the default.

    ``feature_axes`` is an int, a tuple of ints, or None (one norm of the
    whole variable, a scalar ``g``); it applies to every filtered variable.
    """

    layer_instance: nn.Module
    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Any = initializers.ones
    feature_axes: Axes | None = -1
    variable_filter: Iterable | None = dataclasses.field(default_factory=lambda: {"kernel"})
    exponential: bool = False
    init_from_kernel: bool = False

    @nn.compact
    def __call__(self, *args, **kwargs):
        """The wrapped layer's output, computed with weight-normalized variables."""

        def layer_forward(layer_instance):
            return layer_instance(*args, **kwargs)

        return nn.map_variables(
            layer_forward,
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(self._normalize, vs),
            init=self.is_initializing(),
        )(self.layer_instance)

    def _normalize(self, path, vs):
        name = type(self).__name__
        value = jnp.asarray(vs)
        str_path = _key_path(self, path)
        if self.variable_filter and not any(f in str_path for f in self.variable_filter):
            return value
        axes = _feature_axes(name, self.feature_axes, value)
        g_shape = () if axes is None else tuple(value.shape[a] for a in axes)

        # jaxnorm normalizes with one feature axis: several are merged (last) into one.
        if axes is None or len(axes) == 1:
            feature_axis = None if axes is None else axes[0]

            def to_core(t):
                return t

            def from_core(t):
                return t

        else:
            others = tuple(a for a in range(value.ndim) if a not in axes)
            perm = others + axes
            moved_shape = tuple(value.shape[a] for a in perm)
            feature_axis = -1

            def to_core(t):
                return jnp.transpose(t, perm).reshape(moved_shape[: len(others)] + (-1,))

            def from_core(t):
                return jnp.transpose(t.reshape(moved_shape), [perm.index(a) for a in range(value.ndim)])

        core_shape = g_shape if len(g_shape) <= 1 else (-1,)
        if self.use_scale:
            if self.init_from_kernel:

                def scale_init(key, shape, dtype):
                    g = jn.weight_norm_init(to_core(value), feature_axis=feature_axis, exponential=self.exponential)
                    return g.reshape(shape).astype(dtype)

            else:
                scale_init = self.scale_init
            g = self.param(str_path + "/scale", scale_init, g_shape, self.param_dtype)
            dtype = flax_dtypes.canonicalize_dtype(vs, g, dtype=self.dtype)
            compute = jnp.result_type(value, g)
            w = jn.weight_norm(
                to_core(value.astype(compute)),
                jnp.reshape(g, core_shape).astype(compute),
                feature_axis=feature_axis,
                exponential=self.exponential,
            )
        else:
            dtype = flax_dtypes.canonicalize_dtype(vs, dtype=self.dtype)
            ones = jnp.ones(g_shape, value.dtype).reshape(core_shape)
            w = jn.weight_norm(to_core(value), ones, feature_axis=feature_axis)
        return jnp.asarray(from_core(w), dtype)


def _recorded_sigma(sigma, new_u):
    """flax's record of ``σ``: 0 where the iteration reached ``u = 0`` (``spectral_norm_sigma`` returns 1 there)."""
    return jnp.where(jnp.any(new_u != 0), sigma, jnp.zeros_like(sigma))


class SpectralNorm(nn.Module):
    """Spectral normalization (Miyato et al. 2018), a drop-in for ``flax.linen.SpectralNorm``.

    Wraps ``layer_instance`` and divides each of its variables of rank >= 2
    (a kernel; vectors and scalars are left alone) by its spectral norm
    ``σ``, estimated by ``n_steps`` power-iteration steps (the paper's
    Algorithm 1) with :func:`jaxnorm.spectral_norm_sigma`. A kernel of rank
    > 2 is handled as the ``(-1, out)`` matrix of its last axis, or raises a
    ``ValueError`` with ``error_on_non_matrix=True``. ``n_steps < 1``
    leaves every variable unchanged (and creates no state), as in flax.linen.

    The state lives in ``collection_name`` (default ``'batch_stats'``) under
    flax.linen's names and shapes: ``'<path>/u'`` ``(1, out)``, drawn from a
    normal distribution with the ``'params'`` RNG at initialization, and
    ``'<path>/sigma'`` ``()`` (ones). Call with ``update_stats=True`` (and
    that collection mutable) to store the iterated ``u`` and its ``σ``;
    with ``update_stats=False`` the same iteration runs from the stored
    ``u`` and nothing is stored. As in flax.linen, the kernel is always
    divided by the fresh estimate; the stored ``sigma`` is a record of it
    (for logging or export), never read back.

    Zero kernels (``recover_from_zero``). By default, as in flax.linen, a
    step on which ``W v = 0`` (a zero kernel, e.g. the zero-initialized
    ``(heads, head_dim)`` biases of ``MultiHeadDotProductAttention``) stores
    ``u = 0`` and ``sigma = 0``; from ``u = 0`` the estimate stays 0, so that
    kernel is never normalized again, even once training has moved it away
    from zero. ``recover_from_zero=True`` is jaxnorm's alternative: ``u`` is
    kept (and ``sigma = 1`` recorded), so the kernel is divided by its ``σ``
    as soon as it is no longer zero. That changes the numbers from the step
    after a zero kernel on: train with the default to reproduce flax.

    One difference from flax.linen: the normalization in the iteration is
    ``t / max(‖t‖, ε)`` where flax.linen computes ``t / sqrt(‖t‖² + ε)``;
    they agree to ~ε/‖t‖² relative (1e-12/‖t‖²).
    """

    layer_instance: nn.Module
    n_steps: int = 1
    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    error_on_non_matrix: bool = False
    collection_name: str = "batch_stats"
    recover_from_zero: bool = False

    @nn.compact
    def __call__(self, *args, update_stats: bool, **kwargs):
        """The wrapped layer's output, computed with spectrally normalized kernels.

        Args:
          *args, **kwargs: passed on to ``layer_instance``.
          update_stats: store the updated ``u`` and ``sigma`` (training).
        """

        def layer_forward(layer_instance):
            return layer_instance(*args, **kwargs)

        return nn.map_variables(
            layer_forward,
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(
                functools.partial(self._normalize, update_stats=update_stats), vs
            ),
            init=self.is_initializing(),
            mutable=True,
        )(self.layer_instance)

    def _normalize(self, path, vs, update_stats):
        value = jnp.asarray(vs)
        shape = value.shape
        if value.ndim <= 1 or self.n_steps < 1:
            return value
        str_path = _key_path(self, path)
        if value.ndim > 2:
            if self.error_on_non_matrix:
                raise ValueError(
                    f"{type(self).__name__}: variable {str_path!r} has shape {tuple(shape)} "
                    f"({value.ndim}D) but error_on_non_matrix=True allows matrices only; pass "
                    f"error_on_non_matrix=False to normalize it as a ({-1}, {shape[-1]}) matrix"
                )
            value = value.reshape(-1, shape[-1])
        collection = self.collection_name
        u_name, sigma_name = str_path + "/u", str_path + "/sigma"
        u_var = self.variable(
            collection,
            u_name,
            jax.random.normal,
            self.make_rng("params") if not self.has_variable(collection, u_name) else None,
            (1, value.shape[-1]),
            self.param_dtype,
        )
        sigma_var = self.variable(collection, sigma_name, jnp.ones, (), self.param_dtype)
        u = u_var.value
        compute = jnp.result_type(value, u)
        value = value.astype(compute)
        sigma, new_u = jn.spectral_norm_sigma(
            value, u.reshape(-1).astype(compute), n_iterations=self.n_steps, epsilon=self.epsilon,
            recover_from_zero=self.recover_from_zero,
        )
        if update_stats:
            u_var.value = new_u.reshape(1, -1)
            sigma_var.value = sigma if self.recover_from_zero else _recorded_sigma(sigma, new_u)
        dtype = flax_dtypes.canonicalize_dtype(vs, u, dtype=self.dtype)
        # spectral_norm(w, u) is w / spectral_norm_sigma(w, u)[0]; σ is never 0.
        return jnp.asarray((value / sigma).reshape(shape), dtype)


class StandardizedConv(nn.Conv):
    """``flax.linen.Conv`` with a weight-standardized kernel (Qiao et al. 2019).

    Same fields, call and variables (``kernel``, ``bias``, same initial
    values for the same key) as ``nn.Conv``, so a Conv checkpoint loads as
    is; but the convolution uses :func:`jaxnorm.weight_standardize` of the
    kernel: each output feature's ``(kh, kw, in)`` slice with zero mean and
    unit (biased) variance, ``ws_epsilon`` inside the square root. Follow it
    with ``GroupNorm`` for the paper's GN+WS recipe. A ``mask`` multiplies
    the standardized kernel.
    """

    ws_epsilon: float = 1e-5

    @nn.nowrap
    def param(self, name, init_fn, *init_args, **init_kwargs):
        """``nn.Module.param``, but the ``kernel`` comes back standardized.

        ``nn.Conv.__call__`` reads its kernel through ``self.param('kernel',
        ...)``: the stored variable stays the raw kernel, and everything
        after (mask, dtype promotion, the convolution, its derivatives) sees
        the standardized one.
        """
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            value = jn.weight_standardize(value, feature_axis=-1, epsilon=self.ws_epsilon)
        return value
