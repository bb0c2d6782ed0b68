"""LayerNorm and RMSNorm: statistics over the feature axes of each position.

Uses: jaxnorm._core (moments, normalize, params, validate), jaxnorm._lowering
(triton_dispatch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxnorm._core import validate as check
from jaxnorm._core.moments import Reduction
from jaxnorm._core.normalize import NormSpec, normalize
from jaxnorm._core.params import expand_to
from jaxnorm._lowering.triton_dispatch import kernels, resolve_implementation, triton_unsupported, use_triton

__all__ = ["layer_norm", "rms_norm"]


def _prepare(fn, x, params, axis, feature_axes, epsilon, where, masked_output, implementation):
    """Validate the common arguments.

    Returns x, expanded params, axes, feature axes (None when they are the
    normalized axes), mask, ε, masked_output, implementation.
    """
    x = check.check_floating(fn, x)
    if x.ndim < 1:
        raise ValueError(
            f"{fn}: expected an input of rank >= 1, got a scalar of shape (); "
            f"normalize an array of features, e.g. x[None]"
        )
    axes = check.canonical_axes(fn, axis, x.ndim, x.shape)
    if feature_axes is None:
        features = axes
    elif isinstance(feature_axes, (tuple, list)) and not feature_axes:
        features = ()  # one scalar scale and bias
    else:
        features = check.canonical_axes(fn, feature_axes, x.ndim, x.shape, name="feature_axes")
    epsilon = check.check_epsilon(fn, epsilon)
    masked_output = check.check_masked_output(fn, masked_output)
    implementation = resolve_implementation(fn, implementation)
    feature_shape = tuple(x.shape[a] for a in features)
    what = "the normalized axes' shape" if features == axes else "the feature axes' shape"
    allowed = {what: feature_shape}
    per_example = 0 not in axes and 0 not in features and x.ndim > len(features)
    if per_example:
        allowed["per example"] = (x.shape[0],) + feature_shape
    expanded = []
    for name, p in params.items():
        p, kind = check.check_param(fn, name, p, allowed, x.shape)
        positions = features if kind != "per example" else (0,) + features
        expanded.append(expand_to(p, x.ndim, positions))
    mask = check.check_where(fn, where, x.shape)
    return x, expanded, axes, None if features == axes else features, mask, epsilon, masked_output, implementation


def _on_triton(fn, x, params, axes, features_apart, mask, epsilon, implementation, center):
    """The output from the Triton kernels (x as ``(rows, features)``, one group), or None for XLA.

    Parameters over some of the normalized axes (``features_apart`` within
    ``axes``) are broadcast to the normalized axes' shape for the kernels.
    """
    features = math.prod(x.shape[a] for a in axes)
    if features_apart is not None and set(features_apart) <= set(axes):
        normalized = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))

        def widen(p):  # a per-example parameter is left as it is, for triton_unsupported to refuse
            per_example = p is not None and any(p.shape[a] != 1 for a in range(x.ndim) if a not in axes)
            return p if p is None or per_example else jnp.broadcast_to(p, normalized)

        params = {k: widen(p) for k, p in params.items()}
        features_apart = None
    unsupported = triton_unsupported(x, params, where=mask, per_channel_size=features)
    if unsupported is None and axes != tuple(range(x.ndim - len(axes), x.ndim)):
        unsupported = f"axis={axes} (trailing axes only)"
    if unsupported is None and features_apart is not None:
        unsupported = f"feature_axes={features_apart} outside axis={axes} (parameters over the normalized axes only)"
    if not use_triton(fn, implementation, unsupported):
        return None
    flat = [None if p is None else p.reshape(features) for p in params.values()]
    scale, bias = (flat + [None])[:2]
    y = kernels().grouped_norm(x.reshape(-1, features), scale, bias, num_groups=1, channel_axis=-1,
                               epsilon=epsilon, center=center)
    return y.reshape(x.shape)


def layer_norm(
    x,
    scale=None,
    bias=None,
    *,
    axis=-1,
    epsilon: float = 1e-5,
    where=None,
    implementation=None,
    feature_axes=None,
    masked_output: str = "zero",
) -> jax.Array:
    """Layer normalization (Ba, Kiros & Hinton 2016).

    ``y = (x − E[x]) / sqrt(Var[x] + ε) · scale + bias``, with the mean and
    the biased variance taken over ``axis`` at every other index (so any
    number of leading axes is fine). Statistics are exact and in at least
    float32 (see :mod:`jaxnorm._core.moments`); the output has ``x``'s dtype.

    Args:
      x: floating array.
      scale: None, or an array with the shape of the normalized axes
        (``x.shape[axis]`` for a single axis), or of the ``feature_axes``
        when given, or a per-example one with ``x.shape[0]`` prepended:
        conditional LayerNorm (FiLM/AdaLN) with no extra function.
      bias: like ``scale``.
      axis: int or sequence of ints to normalize over (default the last).
      epsilon: added to the variance inside the square root.
      where: optional boolean mask that broadcasts to ``x`` (NumPy rules:
        fewer axes align on the trailing ones; size-1 axes broadcast).
        False entries are left out of the statistics (even if they hold
        NaN); their outputs are set by ``masked_output``.
      implementation: ``"xla"`` (pure JAX), ``"triton"`` (the GPU kernels
        of ``jaxnorm[triton]``; reverse-mode differentiation only; raises
        ValueError where they are unavailable or do not support the call),
        or None (default): XLA everywhere (Triton is opt-in until checked on a GPU).
      feature_axes: int or sequence of ints, the axes ``scale`` and ``bias``
        run along (flax's ``feature_axes``); None (default) means ``axis``.
        They may lie outside ``axis``: ``axis=1, feature_axes=2`` on a
        ``(N, T, D)`` input normalizes over ``T`` and scales along ``D``;
        ``()`` means scalar parameters.
      masked_output: ``"zero"`` (default): masked entries output 0 (and have
        zero derivative); ``"normalized"``: they are normalized with the
        statistics of the selected entries, as flax's modules do (their
        outputs, but never the statistics, depend on their own values).

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError: for integer inputs or parameters.
      ValueError: for axes out of range or repeated, parameters or masks of
        the wrong shape, a negative epsilon, an unknown implementation or
        masked_output.
    """
    fn = "layer_norm"
    x, (scale, bias), axes, apart, mask, epsilon, masked_output, implementation = _prepare(
        fn, x, {"scale": scale, "bias": bias}, axis, feature_axes, epsilon, where, masked_output, implementation
    )
    y = _on_triton(fn, x, {"scale": scale, "bias": bias}, axes, apart, mask, epsilon, implementation, center=True)
    if y is not None:
        return y
    spec = NormSpec(Reduction(axes), epsilon, center=True, masked_output=masked_output)
    return normalize(x, scale, bias, mask, spec)


def rms_norm(
    x,
    scale=None,
    *,
    axis=-1,
    epsilon: float = 1e-6,
    where=None,
    implementation=None,
    feature_axes=None,
    masked_output: str = "zero",
) -> jax.Array:
    """Root-mean-square layer normalization (Zhang & Sennrich 2019).

    ``y = x / sqrt(E[x²] + ε) · scale``, the mean taken over ``axis``. No
    centering, no bias. Statistics are in at least float32; the output has
    ``x``'s dtype.

    Args:
      x: floating array.
      scale: None, or an array with the shape of the normalized axes (of
        ``feature_axes`` when given), or a per-example one with
        ``x.shape[0]`` prepended.
      axis: int or sequence of ints to normalize over (default the last).
      epsilon: added to the mean square inside the square root.
      where: optional boolean mask as in :func:`layer_norm`.
      implementation: ``"xla"`` (pure JAX), ``"triton"`` (the GPU kernels
        of ``jaxnorm[triton]``; reverse-mode differentiation only; raises
        ValueError where they are unavailable or do not support the call),
        or None (default): XLA everywhere (Triton is opt-in until checked on a GPU).

      feature_axes: the axes ``scale`` runs along, as in :func:`layer_norm`.
      masked_output: ``"zero"`` or ``"normalized"``, as in :func:`layer_norm`.

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError, ValueError: as :func:`layer_norm`.
    """
    fn = "rms_norm"
    x, (scale,), axes, apart, mask, epsilon, masked_output, implementation = _prepare(
        fn, x, {"scale": scale}, axis, feature_axes, epsilon, where, masked_output, implementation
    )
    y = _on_triton(fn, x, {"scale": scale}, axes, apart, mask, epsilon, implementation, center=False)
    if y is not None:
        return y
    spec = NormSpec(Reduction(axes), epsilon, center=False, masked_output=masked_output)
    return normalize(x, scale, None, mask, spec)
