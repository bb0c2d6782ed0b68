"""Representative BatchNorm (Gao et al., CVPR 2021) against the reference PyTorch module.

``TorchRBN`` below transcribes the forward pass of the reference
``RepresentativeBatchNorm2d`` (ShangHua-Gao/RBN, NCHW), out of place: the
reference adds the centering calibration to its input in place
(``input += ...``); here ``x = x + ...``. It keeps the running statistics as
``F.batch_norm`` does (PyTorch convention: ``momentum`` is the update weight,
unbiased running variance), and is compared in float64 with
``jn.representative_batch_norm`` on the same data laid out NHWC.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

import jaxnorm as jn

TOL = dict(rtol=1e-10, atol=1e-10)
SHAPE_NCHW = (4, 3, 5, 6)
STEPS = 3

# Jitted with the settings static (one compilation per signature, not per primitive).
rbn = jax.jit(jn.representative_batch_norm, static_argnames=(
    "training", "momentum", "epsilon", "channel_axis", "axis_name", "batch_axis", "convention"))
batch_norm = jax.jit(jn.batch_norm, static_argnames=("training", "momentum", "epsilon", "channel_axis"))


class TorchRBN:
    """Forward of the reference RepresentativeBatchNorm2d, NCHW, out of place."""

    def __init__(self, weight, bias, center_weight, scale_weight, scale_bias,
                 running_mean, running_var, *, momentum=0.1, eps=1e-5):
        def param(p):
            return torch.tensor(np.asarray(p, np.float64)).view(1, -1, 1, 1)

        self.weight, self.bias = param(weight), param(bias)
        self.center_weight, self.scale_weight, self.scale_bias = (
            param(center_weight), param(scale_weight), param(scale_bias))
        self.running_mean = torch.tensor(np.asarray(running_mean, np.float64))
        self.running_var = torch.tensor(np.asarray(running_var, np.float64))
        self.momentum, self.eps = momentum, eps
        self.stas = torch.nn.AdaptiveAvgPool2d((1, 1))

    def __call__(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        x = torch.tensor(x)  # a copy: the caller's array is never touched
        x = x + self.center_weight * self.stas(x)  # centering calibration (out of place)
        output = F.batch_norm(x, self.running_mean, self.running_var, None, None,
                              training, self.momentum, self.eps)
        scale_factor = torch.sigmoid(self.scale_weight * self.stas(output) + self.scale_bias)
        return (self.weight * scale_factor * output + self.bias).numpy()


def nhwc(a):
    return np.ascontiguousarray(np.moveaxis(np.asarray(a), 1, -1))


def nchw(a):
    return np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, 1))


def _setup(seed=0, shape=SHAPE_NCHW):
    """NCHW batches whose examples differ per channel (so K(x) matters), and parameters."""
    rng = np.random.default_rng(seed)
    n, c = shape[:2]
    xs = [rng.uniform(-2, 2, (n, c, 1, 1)) + rng.uniform(0.5, 2, (1, c, 1, 1)) * rng.standard_normal(shape)
          for _ in range(STEPS + 1)]
    params = dict(
        scale=rng.uniform(0.5, 1.5, c), bias=rng.normal(size=c),
        center_weight=rng.normal(0, 0.5, c), scale_weight=rng.normal(0, 1.0, c),
        scale_bias=rng.normal(1.0, 0.5, c),
    )
    stats = jn.BatchStats(rng.normal(size=c), rng.uniform(0.5, 2.0, c))
    return xs, params, stats


def _jn_rbn(params, **kw):
    cal = {k: params[k] for k in ("center_weight", "scale_weight", "scale_bias")}
    return jax.jit(lambda x, stats: jn.representative_batch_norm(
        x, params["scale"], params["bias"], stats, **cal, **kw))


def _torch_rbn(params, mean, var, momentum):
    return TorchRBN(params["scale"], params["bias"], params["center_weight"],
                    params["scale_weight"], params["scale_bias"], mean, var, momentum=momentum)


def test_torch_convention_matches_reference_module():
    xs, params, stats = _setup(0)
    ref = _torch_rbn(params, stats.mean, stats.var, momentum=0.1)
    train = _jn_rbn(params, training=True, momentum=0.1, convention="torch")
    for x in xs[:STEPS]:
        y_ref = ref(x, training=True)
        y, new = train(nhwc(x), stats)
        np.testing.assert_allclose(nchw(y), y_ref, **TOL)
        np.testing.assert_allclose(new.mean, ref.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(new.var, ref.running_var.numpy(), **TOL)
        assert not np.allclose(new.mean, stats.mean)
        stats = new
    x = xs[STEPS]  # unseen batch, eval mode
    y, same = _jn_rbn(params, training=False, convention="torch")(nhwc(x), stats)
    np.testing.assert_allclose(nchw(y), ref(x, training=False), **TOL)
    np.testing.assert_allclose(same.mean, stats.mean, rtol=0, atol=0)


def test_torch_convention_default_momentum_is_0_1():
    xs, params, stats = _setup(1)
    ref = _torch_rbn(params, stats.mean, stats.var, momentum=0.1)
    ref(xs[0], training=True)
    _, new = _jn_rbn(params, training=True, convention="torch")(nhwc(xs[0]), stats)
    np.testing.assert_allclose(new.mean, ref.running_mean.numpy(), **TOL)
    np.testing.assert_allclose(new.var, ref.running_var.numpy(), **TOL)


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_flax_convention_matches_reference_module_with_mapped_stats(momentum):
    """Flax momentum m is torch's 1 − m; Flax stores var·(n − 1)/n of torch's."""
    xs, params, stats = _setup(2)
    n = SHAPE_NCHW[0] * SHAPE_NCHW[2] * SHAPE_NCHW[3]
    unbias = n / (n - 1)
    ref = _torch_rbn(params, stats.mean, np.asarray(stats.var) * unbias, momentum=1 - momentum)
    train = _jn_rbn(params, training=True, momentum=momentum)  # convention="flax" by default
    for x in xs[:STEPS]:
        y_ref = ref(x, training=True)
        y, stats = train(nhwc(x), stats)
        np.testing.assert_allclose(nchw(y), y_ref, **TOL)
        np.testing.assert_allclose(stats.mean, ref.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(stats.var, ref.running_var.numpy() / unbias, **TOL)
    # Eval: the transcription given the biased (Flax) running variance.
    x = xs[STEPS]
    ref_eval = _torch_rbn(params, ref.running_mean.numpy(), ref.running_var.numpy() / unbias, 0.1)
    y, _ = _jn_rbn(params, training=False)(nhwc(x), stats)
    np.testing.assert_allclose(nchw(y), ref_eval(x, training=False), **TOL)


def test_calibration_init_and_output_at_init():
    c = 3
    cal = jn.RBNCalibration.init(c)
    assert isinstance(cal, tuple) and cal._fields == ("center_weight", "scale_weight", "scale_bias")
    for a, value in zip(cal, (0.0, 0.0, 1.0)):
        assert a.shape == (c,) and a.dtype == jnp.float32
        np.testing.assert_array_equal(a, np.full(c, value))
    assert jn.RBNCalibration.init(c, jnp.float64).scale_bias.dtype == jnp.float64

    xs, params, stats = _setup(3)
    x = nhwc(xs[0])
    scale, bias = params["scale"], params["bias"]
    sig1 = 1 / (1 + np.exp(-1.0))
    for training in (True, False):
        y, _ = rbn(x, scale, bias, stats, **cal._asdict(), training=training)
        bn, _ = batch_norm(x, None, None, stats, training=training)
        np.testing.assert_allclose(y, sig1 * np.asarray(bn) * scale + bias, **TOL)
        bn_affine, _ = batch_norm(x, scale, bias, stats, training=training)
        assert np.abs(np.asarray(y) - np.asarray(bn_affine)).max() > 0.1  # not BatchNorm at init
    # The reference module at its own init gives the same.
    ref = TorchRBN(np.ones(c), np.zeros(c), np.zeros(c), np.zeros(c), np.ones(c), stats.mean, stats.var)
    y, _ = rbn(x, None, None, stats, **cal._asdict(), training=True)
    np.testing.assert_allclose(nchw(y), ref(xs[0], training=True), **TOL)  # 0, 0, 1 exact in float32


@pytest.mark.parametrize("training", [True, False])
def test_input_not_modified(training):
    xs, params, stats = _setup(4)
    x = nhwc(xs[0])
    copy = x.copy()
    cal = {k: params[k] for k in ("center_weight", "scale_weight", "scale_bias")}
    assert np.any(cal["center_weight"] != 0)
    jn.representative_batch_norm(x, None, None, stats, **cal, training=training)
    np.testing.assert_array_equal(x, copy)
    jax.jit(lambda x: jn.representative_batch_norm(x, None, None, stats, **cal, training=training))(x)
    np.testing.assert_array_equal(x, copy)
    # float32 input (jnp.asarray may share memory with it on the CPU).
    x32 = x.astype(np.float32)
    copy32 = x32.copy()
    jn.representative_batch_norm(x32, None, None, stats, **cal, training=training)
    np.testing.assert_array_equal(x32, copy32)


def test_check_grads_order2_training():
    """Through the batch statistics, K(x), K(x̂) and the sigmoid, all six inputs."""
    rng = np.random.default_rng(5)
    shape = (3, 3, 4, 2)  # NHWC
    c = shape[-1]
    x = rng.uniform(-1, 1, (3, 1, 1, c)) + rng.standard_normal(shape)
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    cw, sw, sb = rng.normal(0, 0.5, c), rng.normal(0, 1.0, c), rng.normal(1.0, 0.5, c)
    stats = jn.BatchStats(rng.normal(size=c), rng.uniform(0.5, 2.0, c))

    def f(x, scale, bias, cw, sw, sb):
        return jn.representative_batch_norm(x, scale, bias, stats, center_weight=cw, scale_weight=sw,
                                            scale_bias=sb, training=True)[0]

    # jit: one compilation per transformation instead of one per small op (same derivatives).
    check_grads(jax.jit(f), (x, scale, bias, cw, sw, sb), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("convention", ["flax", "torch"])
@pytest.mark.parametrize("training", [True, False])
def test_vmap_per_example_equals_batched(convention, training):
    xs, params, stats = _setup(6)
    x = nhwc(xs[0])
    cal = {k: params[k] for k in ("center_weight", "scale_weight", "scale_bias")}
    kw = dict(**cal, training=training, convention=convention)

    def per_example(xi, stats):
        return jn.representative_batch_norm(xi, params["scale"], params["bias"], stats,
                                            batch_axis=None, axis_name="batch", **kw)

    y, new = jax.jit(jax.vmap(per_example, in_axes=(0, None), out_axes=(0, None), axis_name="batch"))(x, stats)
    y_b, new_b = rbn(x, params["scale"], params["bias"], stats, **kw)
    np.testing.assert_allclose(y, y_b, **TOL)
    np.testing.assert_allclose(new.mean, new_b.mean, **TOL)
    np.testing.assert_allclose(new.var, new_b.var, **TOL)


def test_nchw_channel_axis_1_equals_nhwc():
    xs, params, stats = _setup(7)
    cal = {k: params[k] for k in ("center_weight", "scale_weight", "scale_bias")}
    for training in (True, False):
        y1, s1 = rbn(xs[0], params["scale"], params["bias"], stats, **cal,
                                              training=training, channel_axis=1)
        y2, s2 = rbn(nhwc(xs[0]), params["scale"], params["bias"], stats, **cal,
                                              training=training)
        np.testing.assert_allclose(y1, nchw(y2), **TOL)
        np.testing.assert_allclose(s1.var, s2.var, **TOL)


# -------------------------------------------------------------- errors --

NHWC = (2, 4, 4, 8)


def _call(shape=NHWC, **kw):
    c = shape[kw.get("channel_axis", -1)]
    cal = jn.RBNCalibration.init(c)._asdict()
    cal.update({k: kw.pop(k) for k in list(kw) if k in cal})
    x = jnp.ones(shape, jnp.float32)
    return jn.representative_batch_norm(x, None, None, jn.BatchStats.init(c), **cal, training=True, **kw)


@pytest.mark.parametrize("name", ["center_weight", "scale_weight", "scale_bias"])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (8, 1), (1,), (), (9,), (2, 8)])
def test_calibration_weight_wrong_shape(name, shape):
    match = (rf"^representative_batch_norm: {name} must have shape \(8,\) \(per channel\) for an input "
             rf"of shape \(2, 4, 4, 8\), got shape {re.escape(str(shape))}; .*reshape {name}")
    with pytest.raises(ValueError, match=match):
        _call(**{name: jnp.ones(shape, jnp.float32)})
    with pytest.raises(ValueError, match=match):  # at trace time under jit too
        jax.jit(lambda w: _call(**{name: w}))(jnp.ones(shape, jnp.float32))


def test_calibration_weight_integer():
    with pytest.raises(TypeError, match=r"^representative_batch_norm: scale_bias must be floating point, got dtype int32"):
        _call(scale_bias=jnp.ones((8,), jnp.int32))


@pytest.mark.parametrize("shape, kw, bad", [
    (NHWC, dict(batch_axis=-1), -1),
    (NHWC, dict(batch_axis=3), 3),
    ((2, 8, 4, 4), dict(batch_axis=1, channel_axis=1), 1),
    ((8, 2, 4, 4), dict(batch_axis=0, channel_axis=0), 0),
])
def test_batch_axis_is_channel_axis(shape, kw, bad):
    match = (rf"^representative_batch_norm: batch_axis={bad} is the channel axis of an input of shape "
             rf"{re.escape(str(shape))} \(channel_axis={kw.get('channel_axis', -1)}\); pass the batch axis, "
             rf"or batch_axis=None for a single example")
    with pytest.raises(ValueError, match=match):
        _call(shape, **kw)


def test_batch_axis_out_of_range():
    with pytest.raises(ValueError, match=r"^representative_batch_norm: batch_axis=4 is out of range for an input "
                                         r"of rank 4 \(shape \(2, 4, 4, 8\)\); use a value in \[-4, 3\]"):
        _call(batch_axis=4)


def test_unbound_axis_name():
    with pytest.raises(ValueError, match=r"^representative_batch_norm: axis_name='batch' is not bound"):
        _call(axis_name="batch")
