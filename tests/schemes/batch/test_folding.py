"""fold_batch_norm: an inference BatchNorm folded into the Dense/Conv before it.

For each layer, ``batch_norm(layer(x), scale, bn_bias, stats, training=False)``
must equal ``layer'(x)`` with the folded kernel and bias, where ``layer`` and
``layer'`` are real ``flax.linen`` modules applied to explicit parameters.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

F = 5  # output features
TOL = {jnp.float64: dict(rtol=1e-12, atol=1e-12), jnp.float32: dict(rtol=2e-5, atol=2e-5)}


def _bn_params(rng, dtype, *, with_scale=True, with_bn_bias=True):
    stats = jn.BatchStats(jnp.asarray(rng.normal(size=F), dtype), jnp.asarray(rng.uniform(0.2, 3.0, F), dtype))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, F), dtype) if with_scale else None
    bn_bias = jnp.asarray(rng.normal(size=F), dtype) if with_bn_bias else None
    return stats, scale, bn_bias


def _layers(kind, use_bias, dtype):
    if kind == "dense":
        make = lambda b: nn.Dense(F, use_bias=b, dtype=dtype, param_dtype=dtype)  # noqa: E731
        x_shape = (6, 7)
    else:
        make = lambda b: nn.Conv(F, (3, 3), use_bias=b, dtype=dtype, param_dtype=dtype)  # noqa: E731
        x_shape = (2, 6, 6, 4)
    return make(use_bias), make(True), x_shape


CASES = [  # float64 with every affine variant; float32 (tolerance) with the full affine
    pytest.param(kind, use_bias, dtype, affine, id=f"{kind}-bias={use_bias}-{affine}-{jnp.dtype(dtype).name}")
    for kind in ("dense", "conv")
    for use_bias in (True, False)
    for dtype, affines in ((jnp.float64, ("both", "no_scale", "no_bn_bias", "none")), (jnp.float32, ("both",)))
    for affine in affines
]


@pytest.mark.parametrize("kind, use_bias, dtype, affine", CASES)
def test_folded_layer_equals_layer_then_batch_norm(kind, use_bias, dtype, affine):
    rng = np.random.default_rng(0)
    layer, folded_layer, x_shape = _layers(kind, use_bias, dtype)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    params = layer.init(jax.random.key(0), x)["params"]
    if use_bias:  # flax initializes biases to 0: make them non-trivial
        params = {**params, "bias": jnp.asarray(rng.normal(size=F), dtype)}
    else:
        assert "bias" not in params
    stats, scale, bn_bias = _bn_params(rng, dtype, with_scale=affine in ("both", "no_bn_bias"),
                                       with_bn_bias=affine in ("both", "no_scale"))

    h = layer.apply({"params": params}, x)
    want, same = jn.batch_norm(h, scale, bn_bias, stats, training=False)
    np.testing.assert_array_equal(same.var, stats.var)

    kernel, bias = jn.fold_batch_norm(params["kernel"], params.get("bias"), stats, scale, bn_bias)
    assert kernel.shape == params["kernel"].shape and kernel.dtype == dtype
    assert bias.shape == (F,) and bias.dtype == dtype  # a bias even when the layer had none
    got = folded_layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    np.testing.assert_allclose(got, want, **TOL[dtype])


def test_fold_formula_and_epsilon():
    """kernel' = kernel·a, bias' = (bias − mean)·a + bn_bias, a = scale/sqrt(var + ε)."""
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 2, F))
    bias = rng.normal(size=F)
    stats, scale, bn_bias = _bn_params(rng, jnp.float64)
    for eps in (1e-5, 0.1):
        a = np.asarray(scale) / np.sqrt(np.asarray(stats.var) + eps)
        k, b = jn.fold_batch_norm(kernel, bias, stats, scale, bn_bias, epsilon=eps)
        np.testing.assert_allclose(k, kernel * a, rtol=1e-14)
        np.testing.assert_allclose(b, (bias - np.asarray(stats.mean)) * a + np.asarray(bn_bias), rtol=1e-14)


def test_fold_under_jit():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((4, F))
    bias = rng.normal(size=F)
    stats, scale, bn_bias = _bn_params(rng, jnp.float64)
    eager = jn.fold_batch_norm(kernel, bias, stats, scale, bn_bias)
    jitted = jax.jit(jn.fold_batch_norm)(kernel, bias, stats, scale, bn_bias)
    for e, j in zip(eager, jitted):
        np.testing.assert_allclose(j, e, rtol=1e-14)


# -------------------------------------------------------------- errors --


@pytest.mark.parametrize("field, shape", [("mean", (F + 1,)), ("var", (F - 1,)), ("mean", (1, F)), ("var", ())])
def test_stats_shape_not_matching_kernel(field, shape):
    kernel = jnp.ones((3, 3, 2, F))
    stats = jn.BatchStats(jnp.zeros(F), jnp.ones(F))._replace(**{field: jnp.ones(shape)})
    match = (rf"^fold_batch_norm: stats\.{field} must have shape \({F},\) for an input of shape "
             rf"\(3, 3, 2, {F}\) with {F} channels, got shape {re.escape(str(shape))}")
    with pytest.raises(ValueError, match=match):
        jn.fold_batch_norm(kernel, None, stats)


@pytest.mark.parametrize("name", ["bias", "scale", "bn_bias"])
def test_param_shape_not_matching_kernel(name):
    kernel = jnp.ones((4, F))
    kw = {"bias": None, "scale": None, "bn_bias": None, name: jnp.ones((F + 1,))}
    match = (rf"^fold_batch_norm: {name} must have shape \({F},\) \(per output feature\) for an input of "
             rf"shape \(4, {F}\), got shape \({F + 1},\)")
    with pytest.raises(ValueError, match=match):
        jn.fold_batch_norm(kernel, kw["bias"], jn.BatchStats.init(F), kw["scale"], kw["bn_bias"])


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_])
def test_integer_kernel(dtype):
    kernel = jnp.ones((4, F), dtype)
    match = (rf"^fold_batch_norm: expected a floating-point input, got dtype {jnp.dtype(dtype).name} "
             rf"\(shape \(4, {F}\)\); cast it")
    with pytest.raises(TypeError, match=match):
        jn.fold_batch_norm(kernel, None, jn.BatchStats.init(F))


def test_integer_bias():
    with pytest.raises(TypeError, match=r"^fold_batch_norm: bias must be floating point, got dtype int32"):
        jn.fold_batch_norm(jnp.ones((4, F)), jnp.ones((F,), jnp.int32), jn.BatchStats.init(F))


def test_scalar_kernel():
    with pytest.raises(ValueError, match=r"^fold_batch_norm: expected an input of rank >= 1"):
        jn.fold_batch_norm(jnp.float32(1.0), None, jn.BatchStats.init(1))
