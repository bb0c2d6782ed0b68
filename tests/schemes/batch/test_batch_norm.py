"""BatchNorm and Ghost BatchNorm (``jn.batch_norm``) on one device.

* PyTorch oracle over several steps: ``torch.nn.BatchNormNd`` (channels-first) with
  the layouts mapped (NHWC is moved to NCHW, ``channel_axis=1`` is compared
  as is) and the conventions mapped: Flax's momentum ``m`` is torch's
  ``1 − m``; in the Flax convention the running variance is biased, so it is
  compared with a float64 NumPy running average of the biased batch variance
  (torch's own running variance is unbiased), and ``convention="torch"`` is
  compared with torch's running statistics directly, ``momentum=None``
  (cumulative average) included (``torch.nn.BatchNormNd``, since
  ``F.batch_norm`` has no cumulative mode). Inference is compared with
  ``F.batch_norm`` given the same running statistics.
* float64 NumPy references for per-example (conditional) scale/bias, masks,
  Ghost BatchNorm and the exactness checks.
* Transformations (jit, vmap with ``axis_name``, forward and reverse
  derivatives of order 2) and the error contract (eager and under jit).

Arrays are tiny and the jaxnorm calls are jitted with their settings fixed
(one compilation per shape), which keeps the file fast.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

import jaxnorm as jn
from norm_cases import CASES
from operation_contract import OperationContract

EPS = 1e-5
TOL64 = dict(rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------- helpers --


@functools.cache
def _jit(**static):
    """``jn.batch_norm`` jitted with its keyword-only settings fixed (cached)."""
    def f(x, scale, bias, stats, where):
        return jn.batch_norm(x, scale, bias, stats, where=where, **static)
    return jax.jit(f)


def bn(x, scale, bias, stats, *, where=None, **static):
    """``jn.batch_norm`` under a cached jit (the mask traced, other settings static)."""
    return _jit(**static)(x, scale, bias, stats, where)


def _data(seed: int, shape, *, loc: float = 2.0, spread: float = 3.0) -> np.ndarray:
    """float64 normal entries with a random offset and spread."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-loc, loc) + rng.uniform(0.5, spread) * rng.standard_normal(shape)


def _stats64(c: int) -> jn.BatchStats:
    return jn.BatchStats.init(c, jnp.float64)


def _reduce_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    c = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != c)


def _expand(p: np.ndarray, ndim: int, positions) -> np.ndarray:
    """Place the axes of ``p`` at ``positions`` of a rank-``ndim`` shape, 1 elsewhere."""
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return p.reshape(shape)


def np_batch_norm(x, scale=None, bias=None, *, channel_axis=-1, where=None, eps=EPS):
    """float64 reference: ``(y, mean, biased var, count)`` per channel.

    ``scale``/``bias`` may be ``(C,)`` or per example ``(N, C)``; masked
    entries are left out of the statistics and output 0.
    """
    x = np.asarray(x, np.float64)
    ndim = x.ndim
    c = channel_axis % ndim
    axes = _reduce_axes(ndim, c)
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    xs = np.where(mask, x, 0.0)
    count = mask.sum(axes, keepdims=True).astype(np.float64)
    mean = xs.sum(axes, keepdims=True) / np.maximum(count, 1)
    var = (np.where(mask, x - mean, 0.0) ** 2).sum(axes, keepdims=True) / np.maximum(count, 1)
    y = (x - mean) / np.sqrt(var + eps)
    for p, shift in ((scale, False), (bias, True)):
        if p is None:
            continue
        p = np.asarray(p, np.float64)
        p = _expand(p, ndim, (c,) if p.ndim == 1 else (0, c))
        y = y + p if shift else y * p
    y = np.where(mask, y, 0.0)
    flat = lambda t: t.reshape(-1)  # noqa: E731
    return y, flat(mean), flat(var), flat(count)


def rel_l2(y, ref) -> float:
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def assert_stats_equal(a: jn.BatchStats, b: jn.BatchStats, **tol):
    np.testing.assert_allclose(a.mean, b.mean, **tol)
    np.testing.assert_allclose(a.var, b.var, **tol)
    assert (a.count is None) == (b.count is None)
    if a.count is not None:
        assert int(a.count) == int(b.count)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float64))  # a writable copy


# ------------------------------------------------------ PyTorch oracle --

# name -> (shape in jaxnorm's layout, channel_axis); torch sees moveaxis(x, channel_axis, 1).
LAYOUTS = {
    "nhwc": ((4, 3, 3, 5), -1),
    "nchw": ((4, 5, 3, 3), 1),
    "nc": ((6, 5), -1),
    "nlc_1d": ((3, 7, 5), -1),
    "ndhwc_3d": ((2, 3, 2, 2, 5), -1),
}


def _to_torch(x, channel_axis):
    return _t(np.moveaxis(np.asarray(x), channel_axis, 1).copy())


def _from_torch(y, channel_axis):
    return np.moveaxis(y.detach().numpy(), 1, channel_axis)


# Every layout with a Flax and the cumulative torch setting; the other momentum
# settings (jaxnorm's defaults in both conventions, a torch momentum) on one each.
ORACLE_CASES = [
    pytest.param(layout, convention, momentum, id=f"{label}-{layout}")
    for label, convention, momentum, layouts in [
        ("flax-0.9", "flax", 0.9, list(LAYOUTS)),
        ("torch-cumulative", "torch", None, list(LAYOUTS)),
        ("flax-default", "flax", None, ["nhwc"]),
        ("torch-0.3", "torch", 0.3, ["nchw"]),
        ("torch-default", "torch", "default", ["nc"]),
    ]
    for layout in layouts
]


@pytest.mark.parametrize("layout, convention, momentum", ORACLE_CASES)
def test_torch_oracle_several_steps(layout, convention, momentum):
    """Three training steps then inference: outputs and running stats match torch."""
    shape, channel_axis = LAYOUTS[layout]
    c = shape[channel_axis]
    rng = np.random.default_rng(list(LAYOUTS).index(layout))
    scale = rng.uniform(0.5, 2.0, c)
    bias = rng.standard_normal(c)

    # jaxnorm's settings, and torch's momentum (None: cumulative average).
    static = dict(channel_axis=channel_axis, convention=convention)
    if momentum != "default" and not (convention == "flax" and momentum is None):
        static["momentum"] = momentum
    if convention == "flax":
        m_flax = 0.99 if momentum is None else momentum  # None here: jaxnorm's default
        m_torch = 1 - m_flax
    elif momentum == "default":  # jaxnorm's default momentum becomes torch's 0.1
        m_torch = 0.1
    else:
        m_torch = momentum

    stats = _stats64(c)
    # torch.nn.BatchNormNd, not F.batch_norm, which has no momentum=None.
    module = {3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
    tbn = module[max(len(shape), 3)](c, eps=EPS, momentum=m_torch).double()
    with torch.no_grad():
        tbn.weight.copy_(_t(scale))
        tbn.bias.copy_(_t(bias))
    tbn.train()
    rm, rv = tbn.running_mean, tbn.running_var
    np_var = np.ones(c)  # biased running variance (Flax convention)
    for step in range(3):
        x = _data(10 * step + 1, shape)
        y, stats = bn(x, scale, bias, stats, training=True, **static)
        with torch.no_grad():
            yt = tbn(_to_torch(x, channel_axis))
        np.testing.assert_allclose(y, _from_torch(yt, channel_axis), **TOL64)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(stats.mean, rm.numpy(), **TOL64)
        if convention == "flax":
            _, _, var, _ = np_batch_norm(x, channel_axis=channel_axis)
            np_var = m_flax * np_var + (1 - m_flax) * var
            np.testing.assert_allclose(stats.var, np_var, **TOL64)
        else:
            np.testing.assert_allclose(stats.var, rv.numpy(), **TOL64)
        assert int(stats.count) == step + 1

    # Inference: torch given the same running statistics.
    x = _data(99, shape)
    y, same = bn(x, scale, bias, stats, training=False, **static)
    yt = F.batch_norm(_to_torch(x, channel_axis), _t(stats.mean), _t(stats.var),
                      _t(scale), _t(bias), training=False, eps=EPS)
    np.testing.assert_allclose(y, _from_torch(yt, channel_axis), **TOL64)
    assert_stats_equal(same, stats, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["nhwc", "nc"])
def test_torch_cumulative_average_equals_mean_of_batches(layout):
    """momentum=None: after k batches the running mean is their plain average."""
    shape, channel_axis = LAYOUTS[layout]
    c = shape[channel_axis]
    stats = _stats64(c)
    means, uvars = [], []
    for step in range(4):
        x = _data(step + 50, shape)
        _, stats = bn(x, None, None, stats, training=True, momentum=None, convention="torch")
        _, mean, var, n = np_batch_norm(x)
        means.append(mean)
        uvars.append(var * n / (n - 1))
    np.testing.assert_allclose(stats.mean, np.mean(means, 0), **TOL64)
    np.testing.assert_allclose(stats.var, np.mean(uvars, 0), **TOL64)
    assert int(stats.count) == 4


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nc"])
@pytest.mark.parametrize("training", [True, False])
def test_per_example_scale_bias(layout, training):
    """Conditional BN: (N, C) scale and bias against NumPy."""
    shape, channel_axis = LAYOUTS[layout]
    n, c = shape[0], shape[channel_axis]
    rng = np.random.default_rng(7)
    x = _data(8, shape)
    scale = rng.uniform(0.5, 2.0, (n, c))
    bias = rng.standard_normal((n, c))
    stats = jn.BatchStats(rng.standard_normal(c), rng.uniform(0.5, 2.0, c), jnp.zeros((), jnp.int32))
    y, new = bn(x, scale, bias, stats, training=training, channel_axis=channel_axis, momentum=0.0)
    if training:
        ref, mean, var, _ = np_batch_norm(x, scale, bias, channel_axis=channel_axis)
        np.testing.assert_allclose(new.mean, mean, **TOL64)
        np.testing.assert_allclose(new.var, var, **TOL64)
    else:
        ex = lambda p: _expand(np.asarray(p), len(shape), (channel_axis % len(shape),))  # noqa: E731
        ep = lambda p: _expand(p, len(shape), (0, channel_axis % len(shape)))  # noqa: E731
        ref = (x - ex(stats.mean)) / np.sqrt(ex(stats.var) + EPS) * ep(scale) + ep(bias)
        assert_stats_equal(new, stats, rtol=0, atol=0)
    np.testing.assert_allclose(y, ref, **TOL64)


# --------------------------------------------------------------- masks --


@pytest.mark.parametrize("mask_kind", ["entries", "examples", "channels_last_only"])
@pytest.mark.parametrize("convention", ["flax", "torch"])
def test_where_statistics_of_unmasked_entries(mask_kind, convention):
    shape = (5, 3, 4)
    rng = np.random.default_rng(11)
    x = _data(12, shape)
    scale, bias = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    if mask_kind == "entries":
        where = rng.random(shape) < 0.6
        where[0, 0] = True  # every channel keeps at least two entries
        where[1, 0] = True
    elif mask_kind == "examples":
        where = np.array([True, False, True, True, False]).reshape(5, 1, 1)
    else:
        where = (rng.random((5, 3, 1)) < 0.5)
        where[:2] = True
    y, new = bn(x, scale, bias, _stats64(4), training=True, where=where,
                momentum=1.0 if convention == "torch" else 0.0, convention=convention)
    ref, mean, var, n = np_batch_norm(x, scale, bias, where=where)
    np.testing.assert_allclose(y, ref, **TOL64)
    np.testing.assert_allclose(new.mean, mean, **TOL64)
    np.testing.assert_allclose(new.var, var * n / (n - 1) if convention == "torch" else var, **TOL64)
    full = np.broadcast_to(where, shape)
    assert np.all(np.asarray(y)[~full] == 0)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_where_masked_nan_inf_change_nothing(poison, channel_axis):
    shape = (4, 5, 3) if channel_axis == 1 else (4, 3, 5)
    rng = np.random.default_rng(13)
    x = _data(14, shape)
    where = rng.random(shape) < 0.7
    where[:2] = True
    g, b = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
    stats = _stats64(5)
    kw = dict(training=True, where=where, channel_axis=channel_axis, momentum=0.5)
    clean, clean_stats = bn(x, g, b, stats, **kw)
    dirty, dirty_stats = bn(np.where(where, x, poison), g, b, stats, **kw)
    assert np.isfinite(dirty).all()
    assert np.isfinite(dirty_stats.mean).all() and np.isfinite(dirty_stats.var).all()
    np.testing.assert_array_equal(np.asarray(dirty)[where], np.asarray(clean)[where])
    np.testing.assert_array_equal(np.asarray(dirty)[~where], 0)
    assert_stats_equal(dirty_stats, clean_stats, rtol=0, atol=0)
    # Inference too: masked outputs 0, poison does not leak.
    y, _ = bn(np.where(where, x, poison), g, b, dirty_stats, training=False, where=where,
              channel_axis=channel_axis)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(np.asarray(y)[~where], 0)


# ------------------------------------------------------- Ghost BatchNorm --


@pytest.mark.parametrize("channel_axis, per_example", [(-1, True), (1, False)])
def test_ghost_equals_per_virtual_batch(channel_axis, per_example):
    n, vbs, c = 8, 2, 3
    shape = (n, c, 2, 2) if channel_axis == 1 else (n, 2, 2, c)
    rng = np.random.default_rng(21)
    x = _data(22, shape)
    pshape = (n, c) if per_example else (c,)
    g, b = rng.uniform(0.5, 2.0, pshape), rng.standard_normal(pshape)
    y, new = bn(x, g, b, _stats64(c), training=True, virtual_batch_size=vbs,
                channel_axis=channel_axis, momentum=0.0)
    pieces, means, vars_ = [], [], []
    for k in range(0, n, vbs):
        sl = slice(k, k + vbs)
        gk, bk = (g[sl], b[sl]) if per_example else (g, b)
        yk, sk = bn(x[sl], gk, bk, _stats64(c), training=True, channel_axis=channel_axis,
                    momentum=0.0)
        pieces.append(yk)
        means.append(sk.mean)
        vars_.append(sk.var)
    np.testing.assert_allclose(y, np.concatenate(pieces), **TOL64)
    # Equal counts: the running stats get the plain average of the virtual moments.
    np.testing.assert_allclose(new.mean, np.mean(means, 0), **TOL64)
    np.testing.assert_allclose(new.var, np.mean(vars_, 0), **TOL64)
    assert int(new.count) == 1


@pytest.mark.parametrize("convention", ["flax", "torch"])
def test_ghost_running_stats_count_weighted(convention):
    """Virtual batches of unequal (masked) counts: the average is count-weighted."""
    n, vbs, c = 6, 3, 4
    x = _data(23, (n, 5, c))
    where = np.array([True, True, True, True, False, False]).reshape(n, 1, 1)
    momentum = 1.0 if convention == "torch" else 0.0  # new stats = the batch's
    y, new = bn(x, None, None, _stats64(c), training=True, virtual_batch_size=vbs,
                where=where, momentum=momentum, convention=convention)
    ms, vs, ns, ys = [], [], [], []
    for k in range(0, n, vbs):
        yk, mk, vk, nk = np_batch_norm(x[k:k + vbs], where=where[k:k + vbs])
        ys.append(yk)
        ms.append(mk)
        vs.append(vk * nk / (nk - 1) if convention == "torch" else vk)
        ns.append(nk)
    ns = np.array(ns)
    assert not np.allclose(ns[0], ns[1])  # the weighting matters
    np.testing.assert_allclose(y, np.concatenate(ys), **TOL64)
    np.testing.assert_allclose(new.mean, (ns * np.array(ms)).sum(0) / ns.sum(0), **TOL64)
    np.testing.assert_allclose(new.var, (ns * np.array(vs)).sum(0) / ns.sum(0), **TOL64)


def test_ghost_whole_batch_is_plain_batch_norm():
    x = _data(24, (4, 3, 2))
    a = bn(x, None, None, _stats64(2), training=True, virtual_batch_size=4)
    b = bn(x, None, None, _stats64(2), training=True)
    np.testing.assert_allclose(a[0], b[0], **TOL64)
    assert_stats_equal(a[1], b[1], **TOL64)


# -------------------------------------------------- empty batches --


def _nonzero_stats(c, count=3):
    rng = np.random.default_rng(31)
    return jn.BatchStats(jnp.asarray(rng.standard_normal(c)), jnp.asarray(rng.uniform(0.5, 2, c)),
                         jnp.asarray(count, jnp.int32))


@pytest.mark.parametrize(
    "convention, momentum, shape, channel_axis",
    [("flax", 0.9, (0, 3, 4), -1), ("torch", 0.1, (0, 4), -1), ("torch", None, (0, 4, 3), 1)],
)
def test_empty_batch_leaves_stats_unchanged(convention, momentum, shape, channel_axis):
    stats = _nonzero_stats(4)
    x = np.zeros(shape)
    if convention == "flax":  # once eagerly as well
        y, new = jn.batch_norm(x, jnp.ones(4), jnp.zeros(4), stats, training=True,
                               momentum=momentum, convention=convention)
        assert y.shape == shape
        assert_stats_equal(new, stats, rtol=0, atol=0)
    y, new = bn(x, None, None, stats, training=True, momentum=momentum,
                convention=convention, channel_axis=channel_axis)
    assert y.shape == shape
    assert_stats_equal(new, stats, rtol=0, atol=0)


@pytest.mark.parametrize(
    "convention, momentum, virtual_batch_size",
    [("flax", 0.9, None), ("torch", None, None), ("torch", 0.1, 2)],
)
def test_all_masked_batch_leaves_stats_unchanged(convention, momentum, virtual_batch_size):
    stats = _nonzero_stats(4)
    x = _data(32, (4, 3, 4))
    x[0, 0, 0] = np.nan
    where = np.zeros((4, 3, 4), bool)
    y, new = bn(x, None, None, stats, training=True, where=where, momentum=momentum,
                convention=convention, virtual_batch_size=virtual_batch_size)
    np.testing.assert_array_equal(y, 0)
    assert_stats_equal(new, stats, rtol=0, atol=0)


# ------------------------------------------------------------ numerics --


@pytest.mark.parametrize("mean", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("shape, channel_axis", [((16, 4, 4, 8), -1), ((16, 8, 4, 4), 1), ((256, 8), -1)])
def test_float32_large_mean_exact(mean, shape, channel_axis):
    """Unit spread around `mean`: output within 1e-6 (L2) of float64 on the same inputs."""
    rng = np.random.default_rng(41)
    x = (mean + rng.standard_normal(shape)).astype(np.float32)
    y, new = bn(jnp.asarray(x), None, None, jn.BatchStats.init(8), training=True,
                channel_axis=channel_axis, momentum=0.0)
    ref, m, v, _ = np_batch_norm(x, channel_axis=channel_axis)
    assert y.dtype == jnp.float32
    assert rel_l2(y, ref) < 1e-6
    np.testing.assert_allclose(new.mean, m, rtol=1e-6)
    np.testing.assert_allclose(new.var, v, rtol=1e-4)


@pytest.mark.parametrize("mean", [1e4, 1e6])
def test_float32_large_mean_exact_with_mask_and_affine(mean):
    rng = np.random.default_rng(42)
    shape = (16, 4, 8)
    x = (mean + rng.standard_normal(shape)).astype(np.float32)
    where = rng.random(shape) < 0.7
    g = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y, _ = bn(jnp.asarray(x), g, b, jn.BatchStats.init(8), training=True, where=where)
    ref, *_ = np_batch_norm(x, g, b, where=where)
    assert rel_l2(y, ref) < 1e-6


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)])
@pytest.mark.parametrize("training", [True, False])
def test_half_precision_in_out_stats_float32(dtype, tol, training):
    rng = np.random.default_rng(43)
    # Mean 300, spread 30: x² overflows float16 if squared in float16.
    x = jnp.asarray(300 + 30 * rng.standard_normal((8, 4, 4)), dtype)
    stats = jn.BatchStats(jnp.full((4,), 300, jnp.float32), jnp.full((4,), 900, jnp.float32),
                          jnp.zeros((), jnp.int32))
    y, new = bn(x, jnp.ones(4, dtype), jnp.zeros(4, dtype), stats, training=training, momentum=0.0)
    assert y.dtype == dtype
    assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32
    assert new.count.dtype == jnp.int32
    assert np.isfinite(np.asarray(y, np.float32)).all()
    x64 = np.asarray(x, np.float64)
    if training:
        ref, mean, var, _ = np_batch_norm(x64)
        np.testing.assert_allclose(new.mean, mean, rtol=1e-5)
        np.testing.assert_allclose(new.var, var, rtol=1e-4)
    else:
        ref = (x64 - 300) / np.sqrt(900 + EPS)
    assert rel_l2(np.asarray(y, np.float32), ref) < tol


def test_float64_stays_float64():
    x = _data(44, (4, 3))
    y, new = bn(x, None, None, _stats64(3), training=True)
    assert y.dtype == jnp.float64 and new.mean.dtype == jnp.float64


def test_constant_input_gives_bias_and_finite_grads():
    x = np.full((4, 3, 2), 7.0)
    b = np.array([0.5, -1.0])
    y, new = bn(x, np.ones(2), b, _stats64(2), training=True, momentum=0.0)
    np.testing.assert_allclose(y, np.broadcast_to(b, x.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(new.var, 0, atol=1e-12)
    grads = jax.jit(jax.grad(
        lambda x: jnp.sum(jn.batch_norm(x, None, b, _stats64(2), training=True)[0] ** 2)))(x)
    assert np.isfinite(grads).all()


# ------------------------------------------------------- transformations --


def _grad_inputs(seed, shape, pshape):
    rng = np.random.default_rng(seed)
    x = _data(seed + 1, shape)
    return rng, x, rng.uniform(0.5, 2.0, pshape), rng.standard_normal(pshape)


# The plain NHWC case, and gradients against the float64 oracle, are in the operation
# contract (TestBatchNormContract below), under both XLA programs.
@pytest.mark.parametrize("variant", ["nchw_masked_per_example"])
def test_check_grads_order2_fwd_rev(variant):
    channel_axis = 1 if variant == "nchw_masked_per_example" else -1
    shape = (4, 3, 2) if channel_axis == 1 else (4, 2, 3)
    pshape = (4, 3) if variant == "nchw_masked_per_example" else (3,)
    rng, x, g, b = _grad_inputs(51, shape, pshape)
    kw = dict(training=True, channel_axis=channel_axis)
    if variant == "nchw_masked_per_example":
        where = rng.random(shape) < 0.75
        where[:2] = True
        kw["where"] = where
    stats = _stats64(3)
    f = lambda x, g, b: jn.batch_norm(x, g, b, stats, **kw)[0]  # noqa: E731
    check_grads(f, (x, g, b), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("convention", ["flax", "torch"])
def test_new_stats_carry_no_gradient(convention):
    _, x, g, b = _grad_inputs(54, (4, 2, 3), (3,))
    stats = _stats64(3)

    def stat_sum(x, g, b):
        new = jn.batch_norm(x, g, b, stats, training=True, convention=convention, momentum=0.5)[1]
        return jnp.sum(new.mean) + jnp.sum(new.var)

    for d in jax.jit(jax.grad(stat_sum, argnums=(0, 1, 2)))(x, g, b):
        np.testing.assert_array_equal(d, 0)
    _, tangent = jax.jit(lambda p, t: jax.jvp(stat_sum, p, t))(
        (x, g, b), (np.ones_like(x), np.ones_like(g), np.ones_like(b)))
    assert float(tangent) == 0.0


@pytest.mark.parametrize("variant", ["ghost_torch_masked", "inference_masked"])
def test_jit_equals_eager(variant):
    rng = np.random.default_rng(55)
    x = (3 + rng.standard_normal((4, 3, 3, 5))).astype(np.float32)
    where = rng.random(x.shape) < 0.8
    g, b = rng.uniform(0.5, 2.0, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    stats = jn.BatchStats.init(5)
    kw = {
        "ghost_torch_masked": dict(training=True, where=where, virtual_batch_size=2,
                                   convention="torch"),
        "inference_masked": dict(training=False, where=where),
    }[variant]
    eager = jn.batch_norm(x, g, b, stats, **kw)
    jitted = jax.jit(lambda x, g, b, s: jn.batch_norm(x, g, b, s, **kw))(x, g, b, stats)
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6, atol=1e-6)
    assert_stats_equal(jitted[1], eager[1], rtol=1e-6, atol=1e-6)


def test_traced_momentum_under_jit():
    x = _data(56, (4, 3))
    f = jax.jit(lambda x, m: jn.batch_norm(x, None, None, _stats64(3), training=True, momentum=m)[1])
    ref = bn(x, None, None, _stats64(3), training=True, momentum=0.7)[1]
    assert_stats_equal(f(x, 0.7), ref, **TOL64)


def _vmapped(convention="flax", **kw):
    """batch_norm on one example inside vmap over the batch, stats returned once."""
    def per_example(xi, g, b, st):
        return jn.batch_norm(xi, g, b, st, training=True, axis_name="batch",
                             convention=convention, **kw)
    return jax.vmap(per_example, in_axes=(0, None, None, None), axis_name="batch",
                    out_axes=(0, None))


@pytest.mark.parametrize("shape", [(6, 5), (4, 2, 3, 5)], ids=["rank2", "rank4"])
def test_vmap_with_axis_name_equals_batch(shape):
    rng, x, g, b = _grad_inputs(57, shape, (5,))
    stats = _stats64(5)
    for convention in ("flax", "torch"):  # torch: unbiased over the whole batch's count
        yv, sv = jax.jit(_vmapped(convention))(x, g, b, stats)
        y, s = bn(x, g, b, stats, training=True, convention=convention)
        np.testing.assert_allclose(yv, y, **TOL64)
        assert_stats_equal(sv, s, **TOL64)
    convention = "flax"

    w = rng.standard_normal(shape)
    t = rng.standard_normal(shape)
    loss_v = lambda x, g, b: jnp.sum(_vmapped(convention)(x, g, b, stats)[0] * w)  # noqa: E731
    loss = lambda x, g, b: jnp.sum(  # noqa: E731
        jn.batch_norm(x, g, b, stats, training=True, convention=convention)[0] * w)

    @jax.jit
    def derivatives(x, g, b):
        return {
            "vmap": (jax.grad(loss_v, argnums=(0, 1, 2))(x, g, b),
                     jax.jvp(lambda x: loss_v(x, g, b), (x,), (t,))[1]),
            "batch": (jax.grad(loss, argnums=(0, 1, 2))(x, g, b),
                      jax.jvp(lambda x: loss(x, g, b), (x,), (t,))[1]),
        }

    d = derivatives(x, g, b)  # reverse mode, and forward mode through the vmapped collective
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL64), d["vmap"], d["batch"])


def test_vmap_with_axis_name_and_mask():
    rng, x, g, b = _grad_inputs(58, (6, 2, 4), (4,))
    where = rng.random(x.shape) < 0.7
    where[:2] = True
    stats = _stats64(4)
    f = jax.vmap(lambda xi, wi: jn.batch_norm(xi, g, b, stats, training=True, axis_name="batch",
                                              where=wi),
                 axis_name="batch", out_axes=(0, None))
    yv, sv = jax.jit(f)(x, where)
    y, s = bn(x, g, b, stats, training=True, where=where)
    np.testing.assert_allclose(yv, y, **TOL64)
    assert_stats_equal(sv, s, **TOL64)


def test_vmap_without_axis_name_is_per_example():
    """Plain vmap (no axis_name) normalizes each example's own batch."""
    x = _data(59, (3, 4, 2))
    yv, sv = jax.jit(jax.vmap(
        lambda xi: jn.batch_norm(xi, None, None, _stats64(2), training=True)))(x)
    for i in range(3):
        y, s = bn(x[i], None, None, _stats64(2), training=True)
        np.testing.assert_allclose(yv[i], y, **TOL64)
        np.testing.assert_allclose(sv.mean[i], s.mean, **TOL64)


# ----------------------------------------------------------------- errors --

C = 5
X = (2, 3, C)


def esc(value) -> str:
    return re.escape(str(value))


def _ecase(label, x_shape, kwargs, exc, match, *, dtype=jnp.float32, scale=None, bias=None,
           stats=None):
    stats = jn.BatchStats.init(C) if stats is None else stats
    return pytest.param(x_shape, dtype, scale, bias, stats, kwargs, exc, match, id=label)


def _f32(*shape):
    return jnp.ones(shape, jnp.float32)


ERROR_CASES = [
    _ecase("stats_mean_shape", X, dict(training=True), ValueError,
           rf"^batch_norm: stats\.mean must have shape \(5,\) for an input of shape "
           rf"{esc((2, 3, 5))} with 5 channels, got shape \(4,\).*BatchStats\.init\(5\)",
           stats=jn.BatchStats(_f32(4), _f32(5))),
    _ecase("stats_var_shape", X, dict(training=False), ValueError,
           r"^batch_norm: stats\.var must have shape \(5,\) .*got shape \(1, 5\)",
           stats=jn.BatchStats(_f32(5), _f32(1, 5))),
    _ecase("stats_scalar", X, dict(training=True), ValueError,
           r"^batch_norm: stats\.mean must have shape \(5,\) .*got shape \(\)",
           stats=jn.BatchStats(jnp.zeros(()), _f32(5))),
    _ecase("stats_not_a_tuple", X, dict(training=True), TypeError,
           r"^batch_norm: stats must be a jaxnorm\.BatchStats\(mean, var\).*BatchStats\.init\(5\)",
           stats={"mean": _f32(5), "var": _f32(5)}),
    _ecase("scale_shape", X, dict(training=True), ValueError,
           rf"^batch_norm: scale must have shape \(5,\) \(per channel\) or \(2, 5\) \(per example\) "
           rf"for an input of shape {esc((2, 3, 5))}, got shape \(1, 5\).*reshape scale",
           scale=_f32(1, 5)),
    _ecase("bias_shape", X, dict(training=False), ValueError,
           r"^batch_norm: bias must have shape .*got shape \(4,\).*reshape bias",
           bias=_f32(4)),
    _ecase("scale_torch_style_nchw", (2, C, 3, 3), dict(training=True, channel_axis=1), ValueError,
           r"^batch_norm: scale must have shape \(5,\) .*got shape \(5, 1, 1\)",
           scale=_f32(C, 1, 1)),
    # One value per channel: PyTorch's convention refuses it (the Flax one warns, see below).
    _ecase("single_value_2d", (1, C), dict(training=True, convention="torch"), ValueError,
           r"^batch_norm: expected more than 1 value per channel when training, got input "
           r"shape \(1, 5\).*training=False"),
    _ecase("single_value_4d", (1, 1, 1, C), dict(training=True, convention="torch"), ValueError,
           r"^batch_norm: expected more than 1 value per channel when training.*\(1, 1, 1, 5\)"),
    _ecase("single_value_nchw", (1, C, 1), dict(training=True, channel_axis=1, convention="torch"), ValueError,
           r"more than 1 value per channel"),
    _ecase("single_value_ghost", (4, C), dict(training=True, virtual_batch_size=1, convention="torch"),
           ValueError, r"more than 1 value per channel"),
    _ecase("unbound_axis_name", X, dict(training=True, axis_name="batch"), ValueError,
           r"^batch_norm: axis_name='batch' is not bound.*jax\.vmap.*jax\.pmap.*shard_map"),
    _ecase("unbound_axis_name_inference", X, dict(training=False, axis_name="devices"), ValueError,
           r"^batch_norm: axis_name='devices' is not bound.*vmap.*pmap.*shard_map"),
    _ecase("axis_index_groups_without_axis_name", X,
           dict(training=True, axis_index_groups=[[0], [1]]), ValueError,
           r"^batch_norm: axis_index_groups=.*needs an axis_name"),
    _ecase("virtual_batch_not_dividing", (6, C), dict(training=True, virtual_batch_size=4),
           ValueError,
           r"^batch_norm: a batch of 6 cannot be split into virtual batches of "
           r"virtual_batch_size=4 .*choose a virtual_batch_size dividing 6"),
    _ecase("virtual_batch_zero", (6, C), dict(training=True, virtual_batch_size=0), ValueError,
           r"^batch_norm: virtual_batch_size must be a positive int"),
    _ecase("virtual_batch_float", (6, C), dict(training=True, virtual_batch_size=2.0), TypeError,
           r"^batch_norm: virtual_batch_size must be a positive int.*float"),
    _ecase("integer_x", X, dict(training=True), TypeError,
           r"^batch_norm: expected a floating-point input, got dtype int32.*astype",
           dtype=jnp.int32),
    _ecase("integer_scale", X, dict(training=True), TypeError,
           r"^batch_norm: scale must be floating point, got dtype int32",
           scale=jnp.ones(C, jnp.int32)),
    _ecase("training_none", X, dict(training=None), TypeError,
           r"^batch_norm: training must be a Python bool, got None.*training=True"),
    _ecase("training_int", X, dict(training=1), TypeError,
           r"^batch_norm: training must be a Python bool, got 1 of type int"),
    _ecase("training_str", X, dict(training="yes"), TypeError,
           r"^batch_norm: training must be a Python bool, got 'yes' of type str"),
    _ecase("momentum_above_1", X, dict(training=True, momentum=1.5), ValueError,
           r"^batch_norm: momentum must lie in \[0, 1\], got momentum=1\.5"),
    _ecase("momentum_negative", X, dict(training=True, momentum=-0.1), ValueError,
           r"^batch_norm: momentum must lie in \[0, 1\], got momentum=-0\.1"),
    _ecase("momentum_above_1_torch", X, dict(training=True, momentum=2, convention="torch"),
           ValueError, r"^batch_norm: momentum must lie in \[0, 1\], got momentum=2\b"),
    _ecase("momentum_bool", X, dict(training=True, momentum=True), TypeError,
           r"^batch_norm: momentum must be a number in \[0, 1\], got True"),
    _ecase("momentum_none_flax", X, dict(training=True, momentum=None), ValueError,
           r"^batch_norm: momentum=None \(cumulative average\) exists only in PyTorch's "
           r"convention; pass convention='torch'"),
    _ecase("momentum_none_no_count", X, dict(training=True, momentum=None, convention="torch"),
           ValueError, r"^batch_norm: momentum=None .*stats\.count is None",
           stats=jn.BatchStats(_f32(C), _f32(C))),
    _ecase("unknown_convention", X, dict(training=True, convention="pytorch"), ValueError,
           r"^batch_norm: convention must be 'flax' or 'torch', got 'pytorch'"),
    _ecase("channel_axis_out_of_range", X, dict(training=True, channel_axis=3), ValueError,
           r"^batch_norm: channel_axis=3 is out of range for an input of rank 3"),
    _ecase("epsilon_negative", X, dict(training=True, epsilon=-1.0), ValueError,
           r"^batch_norm: epsilon must be a finite number >= 0"),
    _ecase("where_shape", X, dict(training=True, where=np.ones((2, 5), bool)), ValueError,
           r"^batch_norm: where must broadcast to the input's shape \(2, 3, 5\) .*got shape \(2, 5\)"),
    _ecase("where_dtype", X, dict(training=True, where=np.ones(X, np.float32)), TypeError,
           r"^batch_norm: where must be a boolean mask"),
]


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("x_shape, dtype, scale, bias, stats, kwargs, exc, match", ERROR_CASES)
def test_errors(mode, x_shape, dtype, scale, bias, stats, kwargs, exc, match):
    x = jnp.ones(x_shape, dtype)
    fn = lambda x: jn.batch_norm(x, scale, bias, stats, **kwargs)  # noqa: E731
    with pytest.raises(exc, match=match):
        fn(x) if mode == "eager" else jax.jit(fn)(x)


def test_error_virtual_batch_with_bound_axis_name():
    """Inside a vmap that binds the axis, the combination itself is rejected."""
    x = jnp.ones((3, 4, C))
    f = jax.vmap(lambda xi: jn.batch_norm(xi, None, None, jn.BatchStats.init(C), training=True,
                                          axis_name="batch", virtual_batch_size=2),
                 axis_name="batch", out_axes=(0, None))
    with pytest.raises(ValueError, match=r"^batch_norm: virtual_batch_size and axis_name cannot "
                                         r"be combined"):
        f(x)


def test_error_single_value_across_axis_name_is_fine():
    """One value per member is fine when the axis pools several members."""
    x = _data(60, (3, C))
    y, _ = jax.jit(_vmapped())(x, None, None, _stats64(C))
    np.testing.assert_allclose(y, bn(x, None, None, _stats64(C), training=True)[0], **TOL64)
    # ... and over a single member the Flax convention warns (the output is the bias).
    with pytest.warns(UserWarning, match=r"one value per channel .*1 member"):
        _vmapped()(x[:1], None, None, _stats64(C))


def test_error_axis_name_message_names_the_axis_under_jit():
    f = jax.jit(lambda x: jn.batch_norm(x, None, None, jn.BatchStats.init(C), training=True,
                                        axis_name="i"))
    with pytest.raises(ValueError, match=r"axis_name='i'.*jax\.vmap\(\.\.\., axis_name='i'\)"):
        f(jnp.ones(X))


def test_batch_stats_init():
    s = jn.BatchStats.init(3)
    np.testing.assert_array_equal(s.mean, 0)
    np.testing.assert_array_equal(s.var, 1)
    assert s.mean.dtype == jnp.float32 and s.var.dtype == jnp.float32
    assert s.count.dtype == jnp.int32 and s.count.shape == () and int(s.count) == 0
    assert jn.BatchStats.init(2, jnp.float64).mean.dtype == jnp.float64
    assert jn.BatchStats(jnp.zeros(2), jnp.ones(2)).count is None
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"^BatchStats\.init: num_features must be a positive int"):
            jn.BatchStats.init(bad)


class TestBatchNormContract(OperationContract):
    """BatchNorm in training (NHWC) against the operation contract (tests/operation_contract.py): both XLA programs."""

    cases = [c for c in CASES if c.op == "batch_norm"]
