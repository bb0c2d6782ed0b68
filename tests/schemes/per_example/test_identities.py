"""Identities between jaxnorm's own functions, in float64 at 1e-12.

* GroupNorm with one group is LayerNorm over every axis but the batch, with
  the per-channel (or per-example) scale and bias broadcast to the normalized
  shape, channels last (NHWC) and first (NCHW).
* GroupNorm with one group per channel is InstanceNorm.
* GroupNorm with G groups is InstanceNorm of the input reshaped so that each
  group is one channel, followed by the per-channel affine: the grouped
  reduction against the plain one.
* RMSNorm is LayerNorm (without bias) on an input whose mean along the
  normalized axes is zero, at a matched epsilon.

The channel identities run on 1-D, 2-D and 3-D spatial inputs (and GroupNorm
vs LayerNorm also on none). Shapes, parameters and epsilon are drawn by
hypothesis; each example compiles the functions of both layouts together.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnorm as jn

TOL = dict(rtol=1e-12, atol=1e-12)
EPSILONS = [None, 1e-5, 0.1]
AFFINE = ["none", "scale", "bias", "both", "per_example"]
# Each example is a fresh compilation; few examples per spatial rank keep the
# file fast while still varying shapes, parameters and epsilon.
SETTINGS = settings(max_examples=3, deadline=None)

dims = st.integers(1, 5)
seeds = st.integers(0, 2**31)


def _data(rng, shape, loc=3.0):
    return rng.uniform(-loc, loc) + rng.uniform(0.5, 2.0) * rng.standard_normal(shape)


def _eps(eps):
    return {} if eps is None else {"epsilon": eps}


def _close(got, want):
    got = np.asarray(got)
    assert got.dtype == np.float64, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, np.asarray(want), **TOL)


@st.composite
def channel_cases(draw, srank, min_channels=1):
    """NHWC shape (N, spatial..., C) with ``srank`` spatial axes, a divisor of C."""
    n = draw(st.integers(1, 4))
    c = draw(st.integers(min_channels, 8))
    spatial = tuple(draw(st.lists(dims, min_size=srank, max_size=srank)))
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    return (n,) + spatial + (c,), groups


def _channel_params(rng, affine, n, c):
    """(scale, bias): per channel (C,), per example (N, C), or None."""
    shape = (n, c) if affine == "per_example" else (c,)
    scale = rng.uniform(-2, 2, shape) if affine in ("scale", "both", "per_example") else None
    bias = rng.uniform(-2, 2, shape) if affine in ("bias", "both", "per_example") else None
    return scale, bias


def _layouts(x_nhwc):
    """{layout: (array, channel_axis)}: NHWC as given and NCHW (moveaxis)."""
    return {"nhwc": (x_nhwc, -1), "nchw": (np.moveaxis(x_nhwc, -1, 1), 1)}


def _to_layout(p, layout, normalized_shape, per_example):
    """Broadcast a (C,) or (N, C) parameter to LayerNorm's normalized shape.

    ``normalized_shape`` is the input's shape without the batch axis; a
    per-example parameter keeps its leading N.
    """
    if p is None:
        return None
    k = len(normalized_shape) - 1  # spatial rank
    if layout == "nhwc":  # (..., C) already trails
        q = p.reshape(p.shape[:-1] + (1,) * k + p.shape[-1:])
    else:  # channels first: (..., C, 1, ..., 1)
        q = p.reshape(p.shape + (1,) * k)
    lead = p.shape[:1] if per_example else ()
    return np.broadcast_to(q, lead + tuple(normalized_shape))


# --------------------------------------------------- GroupNorm(1) == LayerNorm --


@pytest.mark.parametrize("srank", [0, 1, 2, 3])
@SETTINGS
@given(data=st.data(), affine=st.sampled_from(AFFINE), eps=st.sampled_from(EPSILONS),
       seed=seeds)
def test_group_norm_one_group_is_layer_norm(srank, data, affine, eps, seed):
    shape, _ = data.draw(channel_cases(srank))
    rng = np.random.default_rng(seed)
    x = _data(rng, shape)
    n, c = shape[0], shape[-1]
    scale, bias = _channel_params(rng, affine, n, c)
    per_example = affine == "per_example"

    inputs, params, axes = {}, {}, {}
    for layout, (xl, channel_axis) in _layouts(x).items():
        normalized = xl.shape[1:]
        inputs[layout] = xl
        axes[layout] = channel_axis
        params[layout] = (_to_layout(scale, layout, normalized, per_example),
                          _to_layout(bias, layout, normalized, per_example))

    @jax.jit
    def run(inputs, params, scale, bias):
        out = {}
        for layout, xl in inputs.items():
            gn = jn.group_norm(xl, scale, bias, num_groups=1, channel_axis=axes[layout],
                               **_eps(eps))
            ln = jn.layer_norm(xl, *params[layout], axis=tuple(range(1, xl.ndim)),
                               **_eps(eps))
            out[layout] = (gn, ln)
        return out

    out = run(inputs, params, scale, bias)
    for layout, (gn, ln) in out.items():
        _close(gn, np.asarray(ln))
    # The two layouts agree with each other too.
    _close(np.moveaxis(np.asarray(out["nchw"][0]), 1, -1), np.asarray(out["nhwc"][0]))


# -------------------------------------------------- GroupNorm(C) == InstanceNorm --


@pytest.mark.parametrize("srank", [1, 2, 3])
@SETTINGS
@given(data=st.data(), affine=st.sampled_from(AFFINE), eps=st.sampled_from(EPSILONS),
       seed=seeds)
def test_group_norm_one_group_per_channel_is_instance_norm(srank, data, affine, eps, seed):
    shape, _ = data.draw(channel_cases(srank))
    rng = np.random.default_rng(seed)
    x = _data(rng, shape)
    scale, bias = _channel_params(rng, affine, shape[0], shape[-1])
    c = shape[-1]

    inputs = {k: v[0] for k, v in _layouts(x).items()}
    axes = {k: v[1] for k, v in _layouts(x).items()}

    @jax.jit
    def run(inputs, scale, bias):
        return {
            k: (jn.group_norm(xl, scale, bias, num_groups=c, channel_axis=axes[k], **_eps(eps)),
                jn.instance_norm(xl, scale, bias, channel_axis=axes[k], **_eps(eps)))
            for k, xl in inputs.items()
        }

    out = run(inputs, scale, bias)
    for layout, (gn, inorm) in out.items():
        _close(gn, np.asarray(inorm))
    _close(np.moveaxis(np.asarray(out["nchw"][0]), 1, -1), np.asarray(out["nhwc"][0]))


# ------------------------------------ GroupNorm(G) == InstanceNorm on the groups --


@pytest.mark.parametrize("srank", [1, 2, 3])
@SETTINGS
@given(data=st.data(), affine=st.sampled_from(AFFINE), eps=st.sampled_from(EPSILONS),
       seed=seeds)
def test_group_norm_is_instance_norm_of_grouped_channels(srank, data, affine, eps, seed):
    # NHWC (N, S..., C) -> (N, prod S, G, C/G): InstanceNorm with channel_axis=2
    # reduces over axes 1 and 3, i.e. over each group. NCHW (N, C, S...) ->
    # (N, G, C/G, prod S): channel_axis=1, reduced over axes 2 and 3.
    shape, groups = data.draw(channel_cases(srank, min_channels=2))
    rng = np.random.default_rng(seed)
    x = _data(rng, shape)
    n, c = shape[0], shape[-1]
    scale, bias = _channel_params(rng, affine, n, c)
    x_nchw = np.moveaxis(x, -1, 1)
    grouped_nhwc = x.reshape(n, -1, groups, c // groups)
    grouped_nchw = x_nchw.reshape(n, groups, c // groups, -1)

    @jax.jit
    def run(x, x_nchw, grouped_nhwc, grouped_nchw, scale, bias):
        return (
            jn.group_norm(x, scale, bias, num_groups=groups, **_eps(eps)),
            jn.group_norm(x_nchw, scale, bias, num_groups=groups, channel_axis=1, **_eps(eps)),
            jn.instance_norm(grouped_nhwc, channel_axis=2, **_eps(eps)),
            jn.instance_norm(grouped_nchw, channel_axis=1, **_eps(eps)),
        )

    gn, gn_nchw, in_nhwc, in_nchw = (
        np.asarray(a) for a in run(x, x_nchw, grouped_nhwc, grouped_nchw, scale, bias)
    )
    # Per-channel affine applied by hand, per layout.
    want = in_nhwc.reshape(shape)
    want_nchw = in_nchw.reshape(x_nchw.shape)
    if affine == "per_example":
        w_hwc = scale.reshape((n,) + (1,) * srank + (c,))
        b_hwc = bias.reshape((n,) + (1,) * srank + (c,))
    else:
        w_hwc = 1.0 if scale is None else scale
        b_hwc = 0.0 if bias is None else bias
    want = want * w_hwc + b_hwc
    want_nchw = want_nchw * np.moveaxis(np.broadcast_to(w_hwc, shape), -1, 1) + np.moveaxis(
        np.broadcast_to(b_hwc, shape), -1, 1
    )
    _close(gn, want)
    _close(gn_nchw, want_nchw)


# ----------------------------------------------- RMSNorm == LayerNorm at mean 0 --


@st.composite
def feature_cases(draw):
    """A shape of rank 1..4 and a sorted, non-empty set of axes (int if one)."""
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(dims, min_size=rank, max_size=rank)))
    axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
    return shape, axes


@settings(max_examples=10, deadline=None)
@given(case=feature_cases(), affine=st.sampled_from(["none", "scale", "per_example"]),
       eps=st.sampled_from([1e-6, 1e-5, 0.1]), seed=seeds)
def test_rms_norm_is_layer_norm_at_zero_mean(case, affine, eps, seed):
    shape, axes = case
    rng = np.random.default_rng(seed)
    x = _data(rng, shape)
    x = x - x.mean(axis=axes, keepdims=True)  # zero mean to ~1e-16, float64
    normalized = tuple(shape[a] for a in axes)
    if affine == "per_example" and (0 in axes or len(axes) == len(shape)):
        affine = "scale"
    if affine == "none":
        scale = None
    elif affine == "scale":
        scale = rng.uniform(-2, 2, normalized)
    else:
        scale = rng.uniform(-2, 2, (shape[0],) + normalized)
    axis = axes[0] if len(axes) == 1 else axes

    @jax.jit
    def run(x, scale):
        return (jn.rms_norm(x, scale, axis=axis, epsilon=eps),
                jn.layer_norm(x, scale, axis=axis, epsilon=eps))

    rms, ln = run(x, scale)
    _close(rms, np.asarray(ln))
