"""LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm in the layouts the tests sweep, with their oracles.

Each case pairs a jaxnorm call with the float64 NumPy reference of
``jaxnorm.reference`` (an independent two-pass transcription), both taking
``(x, scale, bias, where)``; the jaxnorm call also takes the function's
keyword arguments (``implementation=``, ``epsilon=``). ``op`` names the
operation, so that ``tests/operation_contract.py`` runs each operation's
cases against every implementation that supports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jaxnorm import reference as ref
import jaxnorm as jn


@dataclasses.dataclass(frozen=True)
class NormCase:
    name: str
    op: str               # the jaxnorm function
    fn: Callable          # (x, scale, bias, where, **kwargs) -> y, jaxnorm
    ref: Callable         # (x, scale, bias, where) -> y, float64 NumPy
    shape: tuple          # input shape
    param_shape: tuple    # per-channel / normalized-shape parameters
    example_param_shape: tuple  # per-example parameters
    has_bias: bool = True
    triton: bool = True   # a call the Triton kernels take (trailing LayerNorm axes, channels first or last)

    def __str__(self):
        return self.name


def _ln(axis):
    return dict(
        op="layer_norm",
        fn=lambda x, s, b, w, **kw: jn.layer_norm(x, s, b, axis=axis, where=w, **kw),
        ref=lambda x, s, b, w: ref.layer_norm(x, s, b, axis=axis, where=w),
    )


def _gn(groups, channel_axis):
    return dict(
        op="group_norm",
        fn=lambda x, s, b, w, **kw: jn.group_norm(x, s, b, num_groups=groups, channel_axis=channel_axis, where=w,
                                                  **kw),
        ref=lambda x, s, b, w: ref.group_norm(x, s, b, num_groups=groups, channel_axis=channel_axis, where=w),
    )


def _in(channel_axis):
    return dict(
        op="instance_norm",
        fn=lambda x, s, b, w, **kw: jn.instance_norm(x, s, b, channel_axis=channel_axis, where=w, **kw),
        ref=lambda x, s, b, w: ref.instance_norm(x, s, b, channel_axis=channel_axis, where=w),
    )


def _bn(channel_axis):
    """BatchNorm in training, from fresh running statistics (the output only); no ``implementation=``."""

    def fn(x, s, b, w, implementation=None, **kw):
        assert implementation in (None, "xla"), "batch_norm has only the XLA implementation"
        stats = jn.BatchStats.init(x.shape[channel_axis], jnp.promote_types(x.dtype, jnp.float32))
        return jn.batch_norm(x, s, b, stats, training=True, channel_axis=channel_axis, where=w, **kw)[0]

    def reference(x, s, b, w):
        c = np.shape(x)[channel_axis]
        return ref.batch_norm(x, s, b, np.zeros(c), np.ones(c), training=True, channel_axis=channel_axis,
                              where=w)[0]

    return dict(op="batch_norm", triton=False, fn=fn, ref=reference)


CASES = [
    NormCase("layer_norm", shape=(2, 3, 8), param_shape=(8,), example_param_shape=(2, 8), **_ln(-1)),
    NormCase("layer_norm_axes_1_3", shape=(2, 3, 4, 5), param_shape=(3, 5), example_param_shape=(2, 3, 5), triton=False,
             **_ln((1, 3))),
    NormCase(
        "rms_norm", op="rms_norm", shape=(3, 2, 8), param_shape=(8,), example_param_shape=(3, 8), has_bias=False,
        fn=lambda x, s, b, w, **kw: jn.rms_norm(x, s, where=w, **kw),
        ref=lambda x, s, b, w: ref.rms_norm(x, s, where=w),
    ),
    NormCase("group_norm_nhwc", shape=(2, 3, 4, 6), param_shape=(6,), example_param_shape=(2, 6), **_gn(3, -1)),
    NormCase("group_norm_nchw", shape=(2, 6, 3, 4), param_shape=(6,), example_param_shape=(2, 6), **_gn(2, 1)),
    NormCase("group_norm_1d", shape=(3, 5, 4), param_shape=(4,), example_param_shape=(3, 4), **_gn(2, -1)),
    NormCase("group_norm_3d", shape=(2, 2, 3, 2, 6), param_shape=(6,), example_param_shape=(2, 6), **_gn(3, -1)),
    NormCase("group_norm_no_spatial", shape=(3, 8), param_shape=(8,), example_param_shape=(3, 8), **_gn(2, -1)),
    NormCase("group_norm_one_per_set", shape=(3, 8), param_shape=(8,), example_param_shape=(3, 8), **_gn(8, -1)),
    NormCase("instance_norm_nhwc", shape=(2, 3, 4, 5), param_shape=(5,), example_param_shape=(2, 5), **_in(-1)),
    NormCase("instance_norm_ncw", shape=(2, 5, 7), param_shape=(5,), example_param_shape=(2, 5), **_in(1)),
    NormCase("batch_norm_nhwc", shape=(4, 3, 2, 5), param_shape=(5,), example_param_shape=(4, 5), **_bn(-1)),
]


def params(case: NormCase, rng: np.random.Generator, dtype, *, per_example: bool = False):
    """Random scale and bias (bias None when the scheme has none)."""
    shape = case.example_param_shape if per_example else case.param_shape
    scale = (1 + 0.5 * rng.standard_normal(shape)).astype(dtype)
    bias = (0.5 * rng.standard_normal(shape)).astype(dtype) if case.has_bias else None
    return scale, bias
