"""The schemes the harness checks and times, with their oracles and Flax twins.

Uses: jaxnorm, jaxnorm.bench (floor), jaxnorm.reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxnorm import reference
import jaxnorm
from jaxnorm.bench.floor import floor_program

__all__ = [
    "DEFAULT_SHAPE",
    "Case",
    "batch_cases",
    "batch_independent_cases",
    "channel_cases",
    "default_cases",
    "weight_cases",
]

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
      flax_batch_stats: the Flax module keeps running statistics (BatchNorm
        in training mode): it is given fresh ``batch_stats`` and run with
        them mutable.
      floor: ``(x, g) -> ...``, the bare reductions any forward+backward of
        the scheme must run (:mod:`jaxnorm.bench.floor`), or None.
    """

    scheme: str
    shape: tuple[int, ...]
    apply: Callable
    reference: Callable
    param_shape: tuple[int, ...]
    has_bias: bool = True
    flax_module: Callable | None = None
    implementation: str = "xla"
    flax_batch_stats: bool = False
    floor: Callable | None = None


def _flax(name: str, **kwargs) -> Callable:
    def make():
        import flax.linen as nn

        return getattr(nn, name)(**kwargs)

    return make


def default_cases(shape=DEFAULT_SHAPE, *, num_groups: int = 32, implementation: str = "xla") -> list[Case]:
    """Every implemented scheme on a channels-last ``shape`` (kernels sized to match)."""
    return (
        batch_independent_cases(shape, num_groups=num_groups, implementation=implementation)
        + channel_cases(shape, num_groups=num_groups)
        + batch_cases(shape)
        + weight_cases(shape)
    )


def batch_cases(shape=DEFAULT_SHAPE) -> list[Case]:
    """The BatchNorm family in training mode on a channels-last ``shape``.

    Statistics start from ``BatchStats.init``; the timed function returns the
    output (the running-statistics update is part of the same computation).
    Ghost BatchNorm uses four virtual batches when the batch allows it.
    """
    c = shape[-1]
    stats = jaxnorm.BatchStats.init(c)
    zeros, ones = np.zeros(c), np.ones(c)
    n = shape[0]
    virtual = n // 4 if n % 4 == 0 and n >= 8 else None
    rbn = jaxnorm.RBNCalibration(0.1 * np.ones(c, np.float32), 0.1 * np.ones(c, np.float32), np.ones(c, np.float32))
    slope = np.full(c, 0.5, np.float32)
    mix = {"mean_logits": np.array([0.2, -0.1, 0.4], np.float32), "var_logits": np.array([-0.3, 0.1, 0.5], np.float32)}
    rbn_kw = {"center_weight": rbn.center_weight, "scale_weight": rbn.scale_weight, "scale_bias": rbn.scale_bias}
    cases = [
        Case(
            "batch_norm", shape,
            lambda x, s, b: jaxnorm.batch_norm(x, s, b, stats, training=True)[0],
            lambda x, s, b: reference.batch_norm(x, s, b, zeros, ones, training=True)[0],
            (c,), flax_module=_flax("BatchNorm", use_running_average=False, momentum=0.99, epsilon=1e-5),
            flax_batch_stats=True, floor=floor_program("batch_norm", shape),
        ),
    ]
    if virtual is not None:
        def ghost_reference(x, s, b):
            parts = np.split(x, n // virtual)
            return np.concatenate([reference.batch_norm(p, s, b, zeros, ones, training=True)[0] for p in parts])

        cases.append(Case(
            f"ghost_batch_norm/{virtual}", shape,
            lambda x, s, b: jaxnorm.batch_norm(x, s, b, stats, training=True, virtual_batch_size=virtual)[0],
            ghost_reference, (c,),
        ))
    cases += [
        Case(
            "batch_renorm", shape,
            lambda x, s, b: jaxnorm.batch_renorm(x, s, b, stats, training=True)[0],
            lambda x, s, b: reference.batch_renorm(x, s, b, zeros, ones, training=True)[0],
            (c,),
        ),
        Case(
            "representative_batch_norm", shape,
            lambda x, s, b: jaxnorm.representative_batch_norm(x, s, b, stats, training=True, **rbn_kw)[0],
            lambda x, s, b: reference.representative_batch_norm(x, s, b, zeros, ones, training=True, **rbn_kw)[0],
            (c,),
        ),
        Case(
            "evonorm_b0", shape,
            lambda x, s, b: jaxnorm.evonorm_b0(x, s, b, slope, stats, training=True)[0],
            lambda x, s, b: reference.evonorm_b0(x, s, b, slope, zeros, ones, training=True)[0],
            (c,),
        ),
        Case(
            "switchable_norm", shape,
            lambda x, s, b: jaxnorm.switchable_norm(x, s, b, stats, training=True, **mix)[0],
            lambda x, s, b: reference.switchable_norm(x, s, b, zeros, ones, training=True, **mix)[0],
            (c,),
        ),
    ]
    return cases


def batch_independent_cases(shape=DEFAULT_SHAPE, *, num_groups: int = 32, implementation: str = "xla") -> list[Case]:
    """LayerNorm, RMSNorm, GroupNorm and InstanceNorm on a channels-last ``shape``."""
    c = shape[-1]
    impl = {"implementation": implementation}
    return [
        Case(
            "layer_norm", shape,
            lambda x, s, b: jaxnorm.layer_norm(x, s, b, epsilon=1e-5, **impl),
            lambda x, s, b: reference.layer_norm(x, s, b, epsilon=1e-5),
            (c,), flax_module=_flax("LayerNorm", epsilon=1e-5),
            implementation=implementation, floor=floor_program("layer_norm", shape),
        ),
        Case(
            "rms_norm", shape,
            lambda x, s, b: jaxnorm.rms_norm(x, s, epsilon=1e-6, **impl),
            lambda x, s, b: reference.rms_norm(x, s, epsilon=1e-6),
            (c,), has_bias=False, flax_module=_flax("RMSNorm", epsilon=1e-6),
            implementation=implementation, floor=floor_program("rms_norm", shape),
        ),
        Case(
            "group_norm", shape,
            lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=num_groups, epsilon=1e-5, **impl),
            lambda x, s, b: reference.group_norm(x, s, b, num_groups=num_groups, epsilon=1e-5),
            (c,), flax_module=_flax("GroupNorm", num_groups=num_groups, epsilon=1e-5),
            implementation=implementation, floor=floor_program("group_norm", shape),
        ),
        Case(
            "instance_norm", shape,
            lambda x, s, b: jaxnorm.instance_norm(x, s, b, epsilon=1e-5),
            lambda x, s, b: reference.instance_norm(x, s, b, epsilon=1e-5),
            (c,), flax_module=_flax("InstanceNorm", epsilon=1e-5),
            floor=floor_program("instance_norm", shape),
        ),
    ]


def channel_cases(shape=DEFAULT_SHAPE, *, num_groups: int = 32) -> list[Case]:
    """LRN, Filter Response Normalization (with TLU) and EvoNorm-S0 on ``shape``.

    LRN has no parameters (the harness's scale and bias go unused); FRN's
    threshold and EvoNorm-S0's slope are fixed arrays.
    """
    c = shape[-1]
    tau = np.full(c, -0.5, np.float32)
    slope = np.full(c, 0.5, np.float32)
    groups = num_groups if c % num_groups == 0 else 1
    return [
        Case(
            "local_response_norm", shape,
            lambda x, s, b: jaxnorm.local_response_norm(x, size=5, alpha=1e-2),
            lambda x, s, b: reference.local_response_norm(x, size=5, alpha=1e-2),
            (c,), has_bias=False,
        ),
        Case(
            "filter_response_norm", shape,
            lambda x, s, b: jaxnorm.filter_response_norm(x, s, b, tau),
            lambda x, s, b: reference.filter_response_norm(x, s, b, tau),
            (c,),
        ),
        Case(
            "evonorm_s0", shape,
            lambda x, s, b: jaxnorm.evonorm_s0(x, s, b, slope, num_groups=groups),
            lambda x, s, b: reference.evonorm_s0(x, s, b, slope, num_groups=groups),
            (c,),
        ),
    ]


def weight_cases(shape=DEFAULT_SHAPE) -> list[Case]:
    """The weight-side schemes on the 3×3 convolution kernel ``(3, 3, C, C)``.

    Spectral norm runs one power-iteration step from a fixed unit ``u``;
    weight norm's ``g`` is the harness's scale; spectral norm and weight
    standardization take no parameters.
    """
    c = shape[-1]
    kernel = (3, 3, c, c)
    u = np.random.default_rng(0).standard_normal(c).astype(np.float32)
    u /= np.linalg.norm(u)
    return [
        Case(
            "weight_norm", kernel,
            lambda w, s, b: jaxnorm.weight_norm(w, s),
            lambda w, s, b: reference.weight_norm(w, s),
            (c,), has_bias=False,
        ),
        Case(
            "spectral_norm", kernel,
            lambda w, s, b: jaxnorm.spectral_norm(w, u)[0],
            lambda w, s, b: reference.spectral_norm(w, u)[0],
            (c,), has_bias=False,
        ),
        Case(
            "weight_standardize", kernel,
            lambda w, s, b: jaxnorm.weight_standardize(w),
            lambda w, s, b: reference.weight_standardize(w),
            (c,), has_bias=False,
        ),
    ]
