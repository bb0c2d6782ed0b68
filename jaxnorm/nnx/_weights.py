"""flax.nnx modules for the weight schemes: wrappers that normalize another layer's kernel.

``WeightNorm`` and ``SpectralNorm`` wrap any NNX layer as flax.nnx's modules
of the same name do: same constructor and call arguments with the same
defaults, and the same variables under the same paths (``scales[path]``;
``batch_stats[path + ('u',)]`` and ``batch_stats[path + ('sigma',)]``), so
swapping ``from flax import nnx`` for ``from jaxnorm import nnx`` at those
names gives the same numbers on a call. ``StandardizedConv`` is ``nnx.Conv``
convolving with a weight-standardized kernel. The normalization is jaxnorm's
(:func:`jaxnorm.weight_norm`, :func:`jaxnorm.spectral_norm_sigma`,
:func:`jaxnorm.weight_standardize`), as in :mod:`jaxnorm.linen._weights`.

One deliberate difference from flax.nnx: flax.nnx writes the normalized
kernel *into* the wrapped layer's parameter on every call, so after a call
(or an ``nnx.grad``/optimizer step) ``layer_instance.kernel`` holds ``w``
rather than the raw ``v``, and the next call normalizes the normalized
kernel again. Here the normalized kernel is put in place only for the
duration of the wrapped layer's call and the raw value is put back, so the
stored parameter is always the raw one (as in jaxnorm.linen and
flax.linen). The first call's outputs, updated ``u``/``sigma`` and
gradients are the same as flax.nnx's; later ones differ where flax.nnx's
in-place update has changed its parameter.

Uses: jaxnorm, jaxnorm.linen (_weights).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx import initializers
from flax.nnx.nn import dtypes as nnx_dtypes

import jaxnorm as jn

# Axis checks shared with the linen modules (layout only, no math).
from jaxnorm.linen._weights import _feature_axes, _recorded_sigma

__all__ = ["SpectralNorm", "StandardizedConv", "WeightNorm"]

Axes = Any


@contextlib.contextmanager
def _substituted(pairs):
    """Give each ``(variable, value)`` its value for the ``with`` block, then put the old ones back."""
    saved = [(var, var[...]) for var, _ in pairs]
    try:
        for var, new in pairs:
            var.set_value(new)
        yield
    finally:
        for var, old in saved:
            var.set_value(old)


def _core_view(value, axes):
    """``(feature_axis, to_core, from_core)``: several feature axes merged (last) into one for the core."""
    if axes is None or len(axes) == 1:
        return (None if axes is None else axes[0]), (lambda t: t), (lambda t: t)
    others = tuple(a for a in range(value.ndim) if a not in axes)
    perm = others + axes
    moved_shape = tuple(value.shape[a] for a in perm)
    inverse = [perm.index(a) for a in range(value.ndim)]

    def to_core(t):
        return jnp.transpose(t, perm).reshape(moved_shape[: len(others)] + (-1,))

    def from_core(t):
        return jnp.transpose(t.reshape(moved_shape), inverse)

    return -1, to_core, from_core


def _path_str(path) -> str:
    return "/".join(str(p) for p in path)


class WeightNorm(nnx.Module):
    """Weight normalization (Salimans & Kingma 2016), a drop-in for ``flax.nnx.WeightNorm``.

    Wraps ``layer_instance`` and gives it, for each ``nnx.Param`` accepted by
    ``variable_filter`` (default ``nnx.PathContains('kernel')``), the kernel
    ``w = g · v / ‖v‖`` of :func:`jaxnorm.weight_norm`: the norm over every
    axis but ``feature_axes``, ``g`` the entry ``scales[path]`` of this
    module (flax.nnx's path and shape; one ``g`` per feature, a scalar for
    ``feature_axes=None`` or ``()``). The stored ``v`` is left as it is.

    Same arguments and defaults as flax.nnx's (``*args, **kwargs`` go to
    the wrapped layer); ``scale_init`` is called as flax.nnx calls it, with
    ``rngs['params']`` as its key, plus ``param_dtype``. Differences:

    * ``scales[path]`` is an ``nnx.Param`` (flax.nnx stores a bare array,
      which ``nnx.grad``/``nnx.Optimizer(wrt=nnx.Param)`` do not train).
    * ``epsilon`` is accepted and has no effect: flax adds it under its
      square root, jaxnorm has none and gives an all-zero slice ``w = 0``
      with finite derivatives; other kernels agree to ~ε/‖v‖² relative.
    * ``promote_dtype`` is stored and, as in flax.nnx, unused; the output
      dtype is ``dtype`` or the promotion of ``v`` and ``g``.

    Beyond flax.nnx (as jaxnorm.linen's WeightNorm): ``exponential=True``
    (the parameter holds ``log g``) and ``init_from_kernel=True`` (``g``
    starts at ``‖v‖``, :func:`jaxnorm.weight_norm_init`, so the wrapped
    layer computes at initialization what it would unwrapped).
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: Any = initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: Any = nnx.PathContains("kernel"),
        promote_dtype: Any = nnx_dtypes.promote_dtype,
        exponential: bool = False,
        init_from_kernel: bool = False,
        rngs: nnx.Rngs,
    ):
        self.layer_instance = layer_instance
        self.feature_axes = () if feature_axes is None else feature_axes
        self.use_scale = use_scale
        self.scale_init = scale_init
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = nnx.filterlib.to_predicate(variable_filter)
        self.promote_dtype = promote_dtype
        self.exponential = exponential
        self.init_from_kernel = init_from_kernel
        self.scales = nnx.data(None)
        if use_scale:
            scales = {}
            for path, param in self._filtered():
                v = param[...]
                axes = _feature_axes(type(self).__name__, self.feature_axes, v)
                shape = () if axes is None else tuple(v.shape[a] for a in axes)
                if init_from_kernel:
                    feature_axis, to_core, _ = _core_view(v, axes)
                    g = jn.weight_norm_init(to_core(v), feature_axis=feature_axis, exponential=exponential)
                    g = g.reshape(shape).astype(param_dtype)
                else:
                    g = scale_init(rngs["params"], shape, param_dtype)
                scales[path] = nnx.Param(g)
            self.scales = nnx.data(scales)

    def _filtered(self):
        """``(path, nnx.Param)`` of the wrapped layer accepted by ``variable_filter``."""
        state = nnx.state(self.layer_instance, nnx.Param)
        return [(p, v) for p, v in nnx.to_flat_state(state) if self.variable_filter(p, v)]

    def _normalized(self, path, v):
        axes = _feature_axes(type(self).__name__, self.feature_axes, v)
        g_shape = () if axes is None else tuple(v.shape[a] for a in axes)
        feature_axis, to_core, from_core = _core_view(v, axes)
        core_shape = g_shape if len(g_shape) <= 1 else (-1,)
        if self.use_scale:
            if path not in self.scales:
                raise RuntimeError(
                    f"{type(self).__name__}: no scale for the parameter {_path_str(path)!r} of the "
                    f"wrapped layer; its parameters must not change after the wrapper is built "
                    f"(construct WeightNorm after the layer is complete)"
                )
            g = self.scales[path][...]
            dtype = nnx_dtypes.canonicalize_dtype(v, g, dtype=self.dtype)
            compute = jnp.result_type(v, g)
            w = jn.weight_norm(
                to_core(v.astype(compute)), jnp.reshape(g, core_shape).astype(compute),
                feature_axis=feature_axis, exponential=self.exponential,
            )
        else:
            dtype = nnx_dtypes.canonicalize_dtype(v, dtype=self.dtype)
            ones = jnp.ones(g_shape, v.dtype).reshape(core_shape)
            w = jn.weight_norm(to_core(v), ones, feature_axis=feature_axis)
        return jnp.asarray(from_core(w), dtype)

    def __call__(self, x, *args, **kwargs):
        """The wrapped layer's output, computed with weight-normalized kernels."""
        pairs = [(param, self._normalized(path, param[...])) for path, param in self._filtered()]
        with _substituted(pairs):
            return self.layer_instance(x, *args, **kwargs)


class SpectralNorm(nnx.Module):
    """Spectral normalization (Miyato et al. 2018), a drop-in for ``flax.nnx.SpectralNorm``.

    Wraps ``layer_instance`` and divides each of its ``nnx.Param`` of rank
    >= 2 by its spectral norm ``σ``, estimated by ``n_steps`` power-iteration
    steps with :func:`jaxnorm.spectral_norm_sigma`; a parameter of rank > 2
    is handled as the ``(-1, out)`` matrix of its last axis, or raises a
    ``ValueError`` at construction with ``error_on_non_matrix=True``.
    ``n_steps < 1`` leaves every parameter unchanged and creates no state.

    The state is flax.nnx's: ``batch_stats[path + ('u',)]`` ``(1, out)``
    (``nnx.BatchStat``, ``initializers.normal()`` with one ``rngs.params()``
    key per kernel) and ``batch_stats[path + ('sigma',)]`` ``()`` (ones).
    ``update_stats`` (constructor default True; the call argument wins;
    ``model.eval()`` / ``model.train()`` switch it through
    ``use_running_average``) stores the iterated ``u`` and its ``σ``. The
    kernel is always divided by the fresh estimate; the stored ``sigma`` is
    a record, never read back. The stored kernel is left raw (see the module
    docstring).

    Zero kernels: by default, as in flax.nnx, a step on which ``W v = 0``
    stores ``u = 0`` and ``sigma = 0``, and that kernel is never normalized
    again; ``recover_from_zero=True`` keeps ``u`` instead (jaxnorm's
    alternative; see :class:`jaxnorm.linen.SpectralNorm`), which changes the
    numbers from the step after a zero kernel on. The iteration normalizes
    by ``max(‖t‖, ε)`` where flax.nnx uses ``sqrt(‖t‖² + ε)`` (they agree to
    ~ε/‖t‖² relative).
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: nnx.Rngs,
        recover_from_zero: bool = False,
    ):
        self.layer_instance = layer_instance
        self.recover_from_zero = recover_from_zero
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        # flax.nnx's convention: train()/eval() set use_running_average, update_stats is its negation.
        self.use_running_average = not update_stats
        batch_stats = {}
        for path, param in self._kernels():
            key = rngs.params()
            out = param.shape[-1]
            batch_stats[path + ("u",)] = nnx.BatchStat(initializers.normal()(key, (1, out), param_dtype))
            batch_stats[path + ("sigma",)] = nnx.BatchStat(initializers.ones(key, (), param_dtype))
        self.batch_stats = nnx.data(batch_stats)

    def _kernels(self):
        """``(path, nnx.Param)`` of the wrapped layer that are normalized (rank >= 2)."""
        state = nnx.state(self.layer_instance, nnx.Param)
        kernels = []
        for path, param in nnx.to_flat_state(state):
            if param.ndim <= 1 or self.n_steps < 1:
                continue
            if param.ndim > 2 and self.error_on_non_matrix:
                raise ValueError(
                    f"{type(self).__name__}: parameter {_path_str(path)!r} has shape "
                    f"{tuple(param.shape)} ({param.ndim}D) but error_on_non_matrix=True allows "
                    f"matrices only; pass error_on_non_matrix=False to normalize it as a "
                    f"(-1, {param.shape[-1]}) matrix"
                )
            kernels.append((path, param))
        return kernels

    def _normalized(self, path, w, update_stats):
        u_path, sigma_path = path + ("u",), path + ("sigma",)
        if u_path not in self.batch_stats or sigma_path not in self.batch_stats:
            raise RuntimeError(
                f"{type(self).__name__}: no u/sigma for the parameter {_path_str(path)!r} of the "
                f"wrapped layer; its parameters must not change after the wrapper is built "
                f"(construct SpectralNorm after the layer is complete)"
            )
        shape = w.shape
        u = self.batch_stats[u_path][...]
        compute = jnp.result_type(w, u)
        mat = w.reshape(-1, shape[-1]).astype(compute)
        sigma, new_u = jn.spectral_norm_sigma(
            mat, u.reshape(-1).astype(compute), n_iterations=self.n_steps, epsilon=self.epsilon,
            recover_from_zero=self.recover_from_zero,
        )
        if update_stats:
            recorded = sigma if self.recover_from_zero else _recorded_sigma(sigma, new_u)
            self.batch_stats[u_path].set_value(new_u.reshape(1, -1))
            self.batch_stats[sigma_path].set_value(recorded.astype(self.batch_stats[sigma_path].dtype))
        dtype = nnx_dtypes.canonicalize_dtype(w, u, dtype=self.dtype)
        # spectral_norm(w, u) is w / spectral_norm_sigma(w, u)[0]; σ is never 0.
        return jnp.asarray((mat / sigma).reshape(shape), dtype)

    def __call__(self, x, update_stats: bool | None = None):
        """The wrapped layer's output, computed with spectrally normalized kernels.

        Args:
          x: the input of the wrapped layer.
          update_stats: store the updated ``u`` and ``sigma``; None: the
            constructor's ``update_stats`` (``not use_running_average``).
        """
        if update_stats is None:
            if self.use_running_average is None:
                raise ValueError(
                    f"{type(self).__name__}: update_stats is None both in the call and in the "
                    f"module (use_running_average=None); pass update_stats=True/False"
                )
            update_stats = not self.use_running_average
        pairs = [(param, self._normalized(path, param[...], update_stats)) for path, param in self._kernels()]
        with _substituted(pairs):
            return self.layer_instance(x)


class StandardizedConv(nnx.Conv):
    """``flax.nnx.Conv`` with a weight-standardized kernel (Qiao et al. 2019).

    Same arguments, call and variables (``kernel``, ``bias``, same initial
    values for the same ``rngs``) as ``nnx.Conv``, plus ``ws_epsilon``
    (default 1e-5); but the convolution uses :func:`jaxnorm.weight_standardize`
    of the kernel: each output feature's ``(kh, kw, in)`` slice with zero
    mean and unit (biased) variance, ``ws_epsilon`` inside the square root.
    The stored kernel stays raw; a ``mask`` multiplies the standardized
    kernel (as in jaxnorm.linen's StandardizedConv). Follow it with
    ``GroupNorm`` for the paper's GN+WS recipe.
    """

    def __init__(self, *args, ws_epsilon: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_epsilon = ws_epsilon

    def __call__(self, inputs, *args, **kwargs):
        """``nnx.Conv.__call__`` with the standardized kernel."""
        kernel = jn.weight_standardize(self.kernel[...], feature_axis=-1, epsilon=self.ws_epsilon)
        with _substituted([(self.kernel, kernel)]):
            return super().__call__(inputs, *args, **kwargs)
