"""The schemes the harness checks and times, with their oracles and Flax twins."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jaxnorm
from jaxnorm import reference

__all__ = ["Case", "default_cases", "DEFAULT_SHAPE"]

# The CPU shape of ../shared/ANCHORS.md: a CNN activation, N×H×W×C.
DEFAULT_SHAPE = (16, 32, 32, 256)


@dataclasses.dataclass(frozen=True)
class Case:
    """One scheme at one shape.

    Attributes:
      scheme: the jaxnorm function's name.
      shape: input shape.
      apply: ``(x, scale, bias) -> y`` with jaxnorm (bias may be unused).
      reference: the same on NumPy arrays in float64.
      param_shape: shape of scale and bias.
      has_bias: whether the scheme has a bias.
      flax_module: factory of the equivalent ``flax.linen`` module (same ε),
        whose params are ``scale`` (and ``bias``); None if Flax has none.
      implementation: the implementation ``apply`` runs.
    """

    scheme: str
    shape: tuple[int, ...]
    apply: Callable
    reference: Callable
    param_shape: tuple[int, ...]
    has_bias: bool = True
    flax_module: Callable | None = None
    implementation: str = "xla"


def _flax(name: str, **kwargs) -> Callable:
    def make():
        import flax.linen as nn

        return getattr(nn, name)(**kwargs)

    return make


def default_cases(shape=DEFAULT_SHAPE, *, num_groups: int = 32, implementation: str = "xla") -> list[Case]:
    """LayerNorm, RMSNorm, GroupNorm and InstanceNorm on a channels-last ``shape``."""
    c = shape[-1]
    impl = {"implementation": implementation}
    return [
        Case(
            "layer_norm", shape,
            lambda x, s, b: jaxnorm.layer_norm(x, s, b, epsilon=1e-5, **impl),
            lambda x, s, b: reference.layer_norm(x, s, b, epsilon=1e-5),
            (c,), flax_module=_flax("LayerNorm", epsilon=1e-5),
            implementation=implementation,
        ),
        Case(
            "rms_norm", shape,
            lambda x, s, b: jaxnorm.rms_norm(x, s, epsilon=1e-6, **impl),
            lambda x, s, b: reference.rms_norm(x, s, epsilon=1e-6),
            (c,), has_bias=False, flax_module=_flax("RMSNorm", epsilon=1e-6),
            implementation=implementation,
        ),
        Case(
            "group_norm", shape,
            lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=num_groups, epsilon=1e-5, **impl),
            lambda x, s, b: reference.group_norm(x, s, b, num_groups=num_groups, epsilon=1e-5),
            (c,), flax_module=_flax("GroupNorm", num_groups=num_groups, epsilon=1e-5),
            implementation=implementation,
        ),
        Case(
            "instance_norm", shape,
            lambda x, s, b: jaxnorm.instance_norm(x, s, b, epsilon=1e-5),
            lambda x, s, b: reference.instance_norm(x, s, b, epsilon=1e-5),
            (c,), flax_module=_flax("InstanceNorm", epsilon=1e-5),
        ),
    ]
