"""GroupNorm and InstanceNorm: per-example statistics over spatial axes and channel groups.

Uses: jaxnorm._core (normalize, validate), jaxnorm._lowering
(triton_dispatch), jaxnorm._schemes.per_example (channel_setup).
"""

from __future__ import annotations

import jax

from jaxnorm._core import validate as check
from jaxnorm._core.normalize import NormSpec, normalize
from jaxnorm._lowering.triton_dispatch import kernels, resolve_implementation, triton_unsupported, use_triton
from jaxnorm._schemes.per_example.channel_setup import channel_setup

__all__ = ["group_norm", "instance_norm"]


def _channel_norm(fn, x, scale, bias, *, num_groups, channel_axis, epsilon, where, min_rank, implementation,
                  masked_output):
    """Shared body: normalize each example over its spatial axes and channel groups.

    ``num_groups=None`` means one group per channel (InstanceNorm).
    """
    implementation = resolve_implementation(fn, implementation)
    masked_output = check.check_masked_output(fn, masked_output)
    s = channel_setup(
        fn, x, {"scale": scale, "bias": bias}, channel_axis=channel_axis,
        epsilon=epsilon, where=where, num_groups=num_groups, min_rank=min_rank,
    )
    channels = s.x.shape[s.channel_axis]
    unsupported = triton_unsupported(s.x, s.params, where=s.where, per_channel_size=channels)
    if unsupported is None and s.channel_axis not in (1, s.x.ndim - 1):
        unsupported = f"channel_axis={channel_axis} (channels first or last only)"
    if use_triton(fn, implementation, unsupported):
        flat = {k: None if p is None else p.reshape(channels) for k, p in s.params.items()}
        return kernels().grouped_norm(
            s.x, flat["scale"], flat["bias"], num_groups=num_groups or channels,
            channel_axis=-1 if s.channel_axis == s.x.ndim - 1 else 1, epsilon=s.epsilon,
        )
    spec = NormSpec(s.reduction(num_groups), s.epsilon, center=True, masked_output=masked_output)
    return normalize(s.x, s.params["scale"], s.params["bias"], s.where, spec)


def group_norm(
    x,
    scale=None,
    bias=None,
    *,
    num_groups: int,
    channel_axis: int = -1,
    epsilon: float = 1e-5,
    where=None,
    implementation=None,
    masked_output: str = "zero",
) -> jax.Array:
    """Group normalization (Wu & He, ECCV 2018).

    The channels are split into ``num_groups`` contiguous groups; each example
    is normalized with the mean and biased variance of each group over all
    its spatial positions::

        y[n, ..., c] = (x − μ[n, g(c)]) / sqrt(σ²[n, g(c)] + ε) · scale + bias

    ``num_groups=1`` is LayerNorm over (spatial, channels); ``num_groups=C``
    is InstanceNorm. Axis 0 is the batch and is never reduced over.

    Args:
      x: floating array ``(N, spatial..., C)``, or ``(N, C, spatial...)`` with
        ``channel_axis=1``; zero or more spatial axes.
      scale: None, per channel ``(C,)``, or per example ``(N, C)``. A
        per-example scale and bias is conditional normalization (conditional
        GN, AdaIN-style style transfer): compute them from a condition and
        pass them here.
      bias: like ``scale``.
      num_groups: number of channel groups; must divide C.
      channel_axis: the channel axis (default -1, channels last).
      epsilon: added to the variance inside the square root.
      where: optional boolean mask that broadcasts to ``x`` (NumPy rules:
        fewer axes align on the trailing ones; size-1 axes broadcast).
        False entries are left out of the statistics (even if they hold
        NaN); their outputs are set by ``masked_output``.
      implementation: ``"xla"`` (pure JAX), ``"triton"`` (the GPU kernels
        of ``jaxnorm[triton]``; reverse-mode differentiation only; raises
        ValueError where they are unavailable or do not support the call),
        or None (default): XLA everywhere (Triton is opt-in until checked on a GPU).
      masked_output: ``"zero"`` (default): masked entries output 0 (zero
        derivative); ``"normalized"``: they are normalized with the
        statistics of their set's selected entries, as flax's modules do.

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError: for integer inputs or parameters, a non-int num_groups.
      ValueError: num_groups <= 0 or not dividing C, rank < 2, channel_axis
        out of range or 0, parameters or masks of the wrong shape, an
        unknown masked_output.
    """
    fn = "group_norm"
    num_groups = check.check_positive_int(fn, "num_groups", num_groups, example=32)
    return _channel_norm(
        fn, x, scale, bias, num_groups=num_groups, channel_axis=channel_axis,
        epsilon=epsilon, where=where, min_rank=2, implementation=implementation,
        masked_output=masked_output,
    )


def instance_norm(
    x,
    scale=None,
    bias=None,
    *,
    channel_axis: int = -1,
    epsilon: float = 1e-5,
    where=None,
    implementation=None,
    masked_output: str = "zero",
) -> jax.Array:
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016).

    Each channel of each example is normalized with its own mean and biased
    variance over the spatial axes::

        y[n, ..., c] = (x − μ[n, c]) / sqrt(σ²[n, c] + ε) · scale + bias

    Equal to :func:`group_norm` with ``num_groups=C``. With a per-example
    scale and bias set to a style image's channel std and mean, this is
    adaptive instance normalization (AdaIN, Huang & Belongie 2017).

    Args:
      x: floating array ``(N, spatial..., C)``, or ``(N, C, spatial...)`` with
        ``channel_axis=1``; at least one spatial axis.
      scale: None, per channel ``(C,)``, or per example ``(N, C)``.
      bias: like ``scale``.
      channel_axis: the channel axis (default -1, channels last).
      epsilon: added to the variance inside the square root.
      where: optional boolean mask, as in :func:`group_norm`.
      implementation: None (XLA), ``"xla"``, or ``"triton"``, as in
        :func:`group_norm`.
      masked_output: ``"zero"`` (default) or ``"normalized"``, as in
        :func:`group_norm`.

    Returns:
      The normalized array, same shape and dtype as ``x``.

    Raises:
      TypeError, ValueError: as :func:`group_norm` (rank must be >= 3).
    """
    return _channel_norm(
        "instance_norm", x, scale, bias, num_groups=None, channel_axis=channel_axis,
        epsilon=epsilon, where=where, min_rank=3, implementation=implementation,
        masked_output=masked_output,
    )
