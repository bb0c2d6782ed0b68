"""EvoNorm-B0 and Switchable Normalization: batch statistics mixed with per-example ones.

Both schemes combine BatchNorm's per-channel batch statistics (running ones
in inference) with statistics of each example, so they are checked the way
BatchNorm is, against float64 NumPy transcriptions of the papers' equations
written here (not :mod:`jaxnorm.reference`):

* EvoNorm-B0, Liu, Brock, Simonyan & Le (NeurIPS 2020), the B0 row of their
  table of evolved layers (s² a biased variance over the named axes)::

      y = x / max(sqrt(s²_{b,w,h}(x) + ε), v₁·x + sqrt(s²_{w,h}(x) + ε)) · γ + β

* Switchable Normalization, Luo, Ren, Peng, Zhang & Li (ICLR 2019), the
  definitions of the statistics of Ω = {in, ln, bn}, their softmax weights
  and the normalization::

      μ_k = 1/|I_k| Σ_{I_k} h,   σ²_k = 1/|I_k| Σ_{I_k} (h − μ_k)²,   k ∈ {in, ln, bn}
      w_k = e^{λ_k} / Σ_z e^{λ_z}
      ĥ = γ (h − Σ_k w_k μ_k) / sqrt(Σ_k w'_k σ²_k + ε) + β

  (the BN statistics are the running ones in inference). The paper's faster
  route to the LN and BN moments through the IN ones is not used: at a
  large mean it cancels, and the float32 checks need an exact reference.

The running statistics follow BatchNorm's update in both conventions. Then:
float32 exactness at means of 1e4 and 1e6; per-example ``vmap`` with an
``axis_name``; ``shard_map`` over the 8 simulated CPU devices of
``conftest.py`` and ``jit`` on a sharded batch; jit, derivatives of order 2,
statistics without gradient, constant inputs; errors at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxnorm as jn

TOL = dict(rtol=1e-12, atol=1e-12)
EPS = 1e-5
NAMES = ("evonorm_b0", "switchable_norm")
N_DEV = 8

# name -> (shape, channel_axis, batch_axis); 2-D and 1-D spatial, both channel placements,
# and a sequence-first layout whose batch axis is not axis 0.
LAYOUTS = {
    "nhwc": ((4, 3, 5, 3), -1, 0),
    "nchw": ((4, 3, 3, 5), 1, 0),
    "ncl": ((4, 3, 7), 1, 0),
    "lnc": ((7, 4, 3), -1, 1),
}
WITH_NONE = ("nhwc", "ncl")  # layouts that also check scale, bias, v and logits left None


# --------------------------------------------------- float64 transcriptions --


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _axes(ndim, channel_axis, batch_axis):
    """(channel axis, spatial axes of one example, every axis but the channels)."""
    c = channel_axis % ndim
    b = None if batch_axis is None else batch_axis % ndim
    spatial = tuple(a for a in range(ndim) if a not in (b, c))
    return c, spatial, tuple(a for a in range(ndim) if a != c)


def _along(p, ndim, c):
    """A (C,) vector placed along axis ``c``."""
    shape = [1] * ndim
    shape[c] = -1
    return np.asarray(p, np.float64).reshape(shape)


def _mean_var(h, axes):
    """μ = 1/|I| Σ h and σ² = 1/|I| Σ (h − μ)² over ``axes`` (two passes, biased)."""
    mu = h.mean(axis=axes, keepdims=True)
    return mu, ((h - mu) ** 2).mean(axis=axes, keepdims=True)


def _affine(y, scale, bias, c):
    if scale is not None:
        y = y * _along(scale, y.ndim, c)
    if bias is not None:
        y = y + _along(bias, y.ndim, c)
    return y


def paper_evonorm_b0(x, scale, bias, v, running_var, *, training, channel_axis=-1, batch_axis=0,
                     eps=EPS):
    """EvoNorm-B0. Returns ``(y, left, right)``: the two arguments of the max as well."""
    h = np.asarray(x, np.float64)
    c, spatial, bhw = _axes(h.ndim, channel_axis, batch_axis)
    s2_batch = _mean_var(h, bhw)[1] if training else _along(running_var, h.ndim, c)
    s2_instance = _mean_var(h, spatial)[1]
    v1 = 1.0 if v is None else _along(v, h.ndim, c)
    left = np.sqrt(s2_batch + eps)
    right = v1 * h + np.sqrt(s2_instance + eps)
    return _affine(h / np.maximum(left, right), scale, bias, c), left, right


def paper_switchable(x, scale, bias, running_mean, running_var, mean_logits, var_logits, *,
                     training, channel_axis=-1, batch_axis=0, eps=EPS):
    """Switchable Normalization, sources ordered (in, ln, bn)."""
    h = np.asarray(x, np.float64)
    c, spatial, bhw = _axes(h.ndim, channel_axis, batch_axis)
    mu_in, s2_in = _mean_var(h, spatial)
    mu_ln, s2_ln = _mean_var(h, tuple(sorted(spatial + (c,))))
    if training:
        mu_bn, s2_bn = _mean_var(h, bhw)
    else:
        mu_bn, s2_bn = _along(running_mean, h.ndim, c), _along(running_var, h.ndim, c)
    w = np.full(3, 1 / 3) if mean_logits is None else _softmax(mean_logits)
    w2 = np.full(3, 1 / 3) if var_logits is None else _softmax(var_logits)
    mu = w[0] * mu_in + w[1] * mu_ln + w[2] * mu_bn
    s2 = w2[0] * s2_in + w2[1] * s2_ln + w2[2] * s2_bn
    return _affine((h - mu) / np.sqrt(s2 + eps), scale, bias, c)


def paper_running(stats, x, *, channel_axis=-1, convention="flax", momentum=None):
    """BatchNorm's running-statistics update from the batch ``x`` (float64)."""
    h = np.asarray(x, np.float64)
    c, _, bhw = _axes(h.ndim, channel_axis, None)
    n = h.size // h.shape[c]
    mu, s2 = (t.reshape(-1) for t in _mean_var(h, bhw))
    old_mean, old_var = (np.asarray(t, np.float64) for t in (stats.mean, stats.var))
    if convention == "flax":
        m = 0.99 if momentum is None else momentum
        return m * old_mean + (1 - m) * mu, m * old_var + (1 - m) * s2
    m = 0.1 if momentum is None else momentum
    return (1 - m) * old_mean + m * mu, (1 - m) * old_var + m * s2 * n / (n - 1)


# ------------------------------------------------------------------ helpers --


def call(name, x, p, stats, **kw):
    """Either scheme with its differentiable parameters in the dict ``p`` (absent: None)."""
    if name == "evonorm_b0":
        return jn.evonorm_b0(x, p.get("scale"), p.get("bias"), p.get("v"), stats, **kw)
    return jn.switchable_norm(x, p.get("scale"), p.get("bias"), stats,
                              mean_logits=p.get("mean_logits"), var_logits=p.get("var_logits"), **kw)


def paper(name, x, p, stats, *, training, channel_axis=-1, batch_axis=0):
    p = {k: None if v is None else np.asarray(v, np.float64) for k, v in p.items()}
    if name == "evonorm_b0":
        return paper_evonorm_b0(x, p.get("scale"), p.get("bias"), p.get("v"), stats.var,
                                training=training, channel_axis=channel_axis,
                                batch_axis=batch_axis)[0]
    return paper_switchable(x, p.get("scale"), p.get("bias"), stats.mean, stats.var,
                            p.get("mean_logits"), p.get("var_logits"), training=training,
                            channel_axis=channel_axis, batch_axis=batch_axis)


@functools.cache
def jitted(name, **kw):
    """``f(x, p, stats)`` jitted once per scheme and settings (shared between tests)."""
    return jax.jit(lambda x, p, stats: call(name, x, p, stats, **kw))


def settings(training, channel_axis=-1, batch_axis=0, **extra):
    """Keyword arguments spelled the same way everywhere, so ``jitted`` compiles once."""
    return dict(training=training, channel_axis=channel_axis, batch_axis=batch_axis, **extra)


def _data(shape, channel_axis=-1, batch_axis=0, seed=0, loc=0.0):
    """Per-example, per-channel offsets and per-channel spreads, so IN, LN and BN differ."""
    rng = np.random.default_rng(seed)
    c, b = channel_axis % len(shape), batch_axis % len(shape)

    def only(*axes):
        return tuple(n if a in axes else 1 for a, n in enumerate(shape))

    return (loc + rng.uniform(-2, 2, only(b, c))
            + rng.uniform(0.5, 2.0, only(c)) * rng.standard_normal(shape))


def _params(name, c, seed=1):
    rng = np.random.default_rng(seed)
    p = dict(scale=rng.uniform(0.5, 1.5, c), bias=rng.standard_normal(c))
    if name == "evonorm_b0":
        p["v"] = rng.normal(0.5, 1.0, c)
    else:
        p["mean_logits"] = rng.normal(0, 1.0, 3)
        p["var_logits"] = rng.normal(0, 1.0, 3)
    return p


def _stats(c, seed=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return jn.BatchStats(jnp.asarray(rng.standard_normal(c), dtype),
                         jnp.asarray(rng.uniform(0.5, 2.0, c), dtype),
                         jnp.zeros((), jnp.int32))


def assert_stats(new, mean, var, **tol):
    np.testing.assert_allclose(new.mean, mean, **(tol or TOL))
    np.testing.assert_allclose(new.var, var, **(tol or TOL))


def rel_l2(y, ref) -> float:
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


# ------------------------------------------------- 1. the papers' equations --


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_evonorm_b0_matches_paper(layout, training):
    shape, ca, ba = LAYOUTS[layout]
    c = shape[ca]
    x = _data(shape, ca, ba, seed=3)
    full = _params("evonorm_b0", c, seed=4)
    stats = _stats(c, seed=5)
    f = jitted("evonorm_b0", **settings(training, ca, ba))
    # scale, bias and v None (v = 1) on a 2-D and a 1-D layout, and all given everywhere.
    for p in ([{}] if layout in WITH_NONE else []) + [full]:
        y, new = f(x, p, stats)
        y_ref, left, right = paper_evonorm_b0(x, p.get("scale"), p.get("bias"), p.get("v"),
                                              stats.var, training=training, channel_axis=ca,
                                              batch_axis=ba)
        assert y.shape == x.shape and y.dtype == jnp.float64
        np.testing.assert_allclose(y, y_ref, **TOL)
        # Both arguments of the max are taken somewhere, so both branches are checked.
        assert np.any(left > right) and np.any(right > left)
        if training:
            assert_stats(new, *paper_running(stats, x, channel_axis=ca))
            assert int(new.count) == 1
        else:
            assert_stats(new, stats.mean, stats.var, rtol=0, atol=0)
            assert int(new.count) == 0


NEAR_ONE_HOT = np.array([12.0, -12.0, -12.0])  # weights (1, 4e-11, 4e-11)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_switchable_norm_matches_paper(layout, training):
    shape, ca, ba = LAYOUTS[layout]
    c = shape[ca]
    x = _data(shape, ca, ba, seed=6)
    full = _params("switchable_norm", c, seed=7)
    stats = _stats(c, seed=8)
    f = jitted("switchable_norm", **settings(training, ca, ba))

    def check(p):
        y, new = f(x, p, stats)
        ref = paper_switchable(x, p.get("scale"), p.get("bias"), stats.mean, stats.var,
                               p.get("mean_logits"), p.get("var_logits"), training=training,
                               channel_axis=ca, batch_axis=ba)
        np.testing.assert_allclose(y, ref, **TOL)
        if training:  # from the BN statistics, whatever the weights
            assert_stats(new, *paper_running(stats, x, channel_axis=ca))
            assert int(new.count) == 1
        else:
            assert_stats(new, stats.mean, stats.var, rtol=0, atol=0)
        return np.asarray(y)

    if layout in WITH_NONE:  # no affine, logits None (equal weights)
        y_default = check({})
    else:
        y_default = paper_switchable(x, None, None, stats.mean, stats.var, None, None,
                                     training=training, channel_axis=ca, batch_axis=ba)
    rng = np.random.default_rng(9)
    outputs = []
    for ml, vl in [
        (np.zeros(3), np.zeros(3)),  # equal weights, the paper's initialization
        (full["mean_logits"], full["var_logits"]),
        (rng.normal(0, 3.0, 3), rng.normal(0, 3.0, 3)),
        (NEAR_ONE_HOT, NEAR_ONE_HOT[::-1].copy()),  # ~IN mean, ~BN variance
        (NEAR_ONE_HOT[[1, 0, 2]], NEAR_ONE_HOT[[1, 0, 2]]),  # ~LN
    ]:
        outputs.append(check(dict(full, mean_logits=ml, var_logits=vl)))
    if layout == "nhwc":  # one set of logits given, the other None (equal weights)
        check({k: full[k] for k in ("scale", "bias", "mean_logits")})
        check({k: full[k] for k in ("scale", "var_logits")})
    # Equal logits of any value are the default weights.
    affine = _affine(y_default, full["scale"], full["bias"], ca % x.ndim)
    np.testing.assert_allclose(outputs[0], affine, **TOL)
    y_eq, _ = f(x, dict(full, mean_logits=np.full(3, 2.5), var_logits=np.full(3, -1.0)), stats)
    np.testing.assert_allclose(y_eq, affine, **TOL)
    # The weights matter: the mixtures give different outputs.
    for i in range(len(outputs)):
        for j in range(i):
            assert np.abs(outputs[i] - outputs[j]).max() > 1e-3


_instance_norm = jax.jit(jn.instance_norm, static_argnames=("channel_axis",))
_layer_norm = jax.jit(jn.layer_norm, static_argnames=("axis",))
_batch_norm = jax.jit(jn.batch_norm, static_argnames=("training", "channel_axis"))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("source", ["instance", "layer", "batch"])
def test_switchable_one_hot_logits_reproduce_in_ln_bn(source, training):
    logits = np.full(3, -30.0)
    logits[("instance", "layer", "batch").index(source)] = 30.0  # the others weigh e^-60
    shape, ca, ba = LAYOUTS["nchw"]  # channels last: near-one-hot logits in the test above
    c = shape[ca]
    x = _data(shape, ca, seed=10)
    p = _params("switchable_norm", c, seed=11)
    stats = _stats(c, seed=12)
    y, new = jitted("switchable_norm", **settings(training, ca, ba))(
        x, dict(p, mean_logits=logits, var_logits=logits), stats)
    refs = {
        "instance": _instance_norm(x, p["scale"], p["bias"], channel_axis=ca),
        "layer": _affine(np.asarray(_layer_norm(x, axis=(1, 2, 3))), p["scale"], p["bias"], ca),
    }
    refs["batch"], new_bn = _batch_norm(x, p["scale"], p["bias"], stats, training=training,
                                        channel_axis=ca)
    np.testing.assert_allclose(y, refs[source], **TOL)
    assert_stats(new, new_bn.mean, new_bn.var)
    assert int(new.count) == int(new_bn.count)
    for other, ref in refs.items():  # and not the other two
        if other != source:
            assert np.abs(np.asarray(y) - np.asarray(ref)).max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("convention, momentum", [("flax", 0.7), ("torch", None)])
def test_running_statistics_three_steps(name, convention, momentum):
    """Flax with a non-default decay, torch with its default 0.1 (0.3: the shard_map test)."""
    shape, ca, ba = LAYOUTS["nchw"]
    c = shape[ca]
    p = _params(name, c, seed=13)
    stats = _stats(c, seed=14)
    extra = dict(convention=convention) if momentum is None else dict(convention=convention,
                                                                       momentum=momentum)
    f = jitted(name, **settings(True, ca, ba, **extra))
    mean, var = np.asarray(stats.mean), np.asarray(stats.var)
    for step in range(3):
        x = _data(shape, ca, seed=15 + step, loc=step - 1.0)
        y, stats = f(x, p, stats)
        np.testing.assert_allclose(y, paper(name, x, p, stats, training=True, channel_axis=ca), **TOL)
        mean, var = paper_running(jn.BatchStats(mean, var), x, channel_axis=ca,
                                  convention=convention, momentum=momentum)
        assert_stats(stats, mean, var)
        assert int(stats.count) == step + 1
    # Inference with the accumulated statistics uses them as stored.
    x = _data(shape, ca, seed=20)
    y, same = jitted(name, **settings(False, ca, ba))(x, p, stats)
    np.testing.assert_allclose(y, paper(name, x, p, stats, training=False, channel_axis=ca), **TOL)
    assert_stats(same, mean, var)
    assert int(same.count) == 3


# ----------------------------------------------------------- 2. exactness --


@pytest.mark.parametrize("loc", [1e4, 1e6])
@pytest.mark.parametrize("name", NAMES)
def test_float32_large_mean_exact(name, loc):
    """Unit spread at a large mean: float32 output within 1e-5 (relative L2) of float64."""
    shape = (6, 4, 5, 4)
    rng = np.random.default_rng(21)
    x = (loc + rng.uniform(-1, 1, (6, 1, 1, 4)) + rng.standard_normal(shape)).astype(np.float32)
    x64 = x.astype(np.float64)
    p = {k: v.astype(np.float32) for k, v in _params(name, 4, seed=22).items()}
    if name == "evonorm_b0":
        p["v"] = np.array([1.0, -1.0, 0.5, -0.5], np.float32)  # both branches of the max
    stats = jn.BatchStats(jnp.asarray(loc + rng.uniform(-1, 1, 4), jnp.float32),
                          jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32))
    for training in (True, False):
        y, new = jitted(name, **settings(training, momentum=0.5))(x, p, stats)
        assert y.dtype == jnp.float32 and new.mean.dtype == jnp.float32
        ref = paper(name, x64, p, stats, training=training)
        assert rel_l2(y, ref) <= 1e-5, rel_l2(y, ref)
        if training:
            mean, var = paper_running(stats, x64, momentum=0.5)
            np.testing.assert_allclose(new.mean, mean, rtol=1e-6)
            np.testing.assert_allclose(new.var, var, rtol=1e-5)


# ------------------------------------------------------ 3. vmap, axis_name --

VMAP_CASES = {"evonorm_b0": ("nhwc", "flax"), "switchable_norm": ("nchw", "torch")}


def loss_and_grads(f, w):
    """``((loss, (y, new_stats)), (dx, dparams))`` of ``sum(f(x, p)[0] · w)``, jitted: one compile."""
    def loss(x, p):
        y, new = f(x, p)
        return jnp.sum(y * w), (y, new)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def assert_same_run(run, ref, p):
    """Outputs, new statistics and gradients of two ``loss_and_grads`` results agree."""
    (_, (y, new)), (dx, dp) = run
    (_, (y_ref, new_ref)), (dx_ref, dp_ref) = ref
    np.testing.assert_allclose(y, y_ref, **TOL)
    assert_stats(new, new_ref.mean, new_ref.var)
    assert int(new.count) == int(new_ref.count)
    np.testing.assert_allclose(dx, dx_ref, **TOL)
    assert set(dp) == set(dp_ref) == set(p)
    for k in p:
        np.testing.assert_allclose(dp[k], dp_ref[k], **TOL)
        assert np.abs(np.asarray(dp_ref[k])).max() > 1e-3  # each parameter matters
    return y, new


@pytest.mark.parametrize("name", NAMES)
def test_vmap_per_example_equals_batch(name):
    layout, convention = VMAP_CASES[name]
    shape, ca, _ = LAYOUTS[layout]
    c = shape[ca]
    x = _data(shape, ca, seed=23)
    p = _params(name, c, seed=24)
    stats = _stats(c, seed=25)
    w = np.random.default_rng(26).standard_normal(shape)
    ca_example = ca if ca < 0 else ca - 1  # the batch axis 0 is mapped away

    def per_example(xi, p):
        return call(name, xi, p, stats, training=True, convention=convention,
                    channel_axis=ca_example, axis_name="b", batch_axis=None)

    mapped = jax.vmap(per_example, in_axes=(0, None), out_axes=(0, None), axis_name="b")

    def whole(x, p):
        return call(name, x, p, stats, training=True, convention=convention, channel_axis=ca)

    y, new = assert_same_run(loss_and_grads(mapped, w)(x, p), loss_and_grads(whole, w)(x, p), p)
    assert int(new.count) == 1
    np.testing.assert_allclose(y, paper(name, x, p, stats, training=True, channel_axis=ca), **TOL)
    assert_stats(new, *paper_running(stats, x, channel_axis=ca, convention=convention))


# ---------------------------------------------------- 4. across 8 devices --


@functools.cache
def _mesh():
    return jax.make_mesh((N_DEV,), ("d",))


def _shard(x):
    return jax.device_put(x, NamedSharding(_mesh(), P("d")))


needs_8 = pytest.mark.skipif(jax.device_count() < N_DEV,
                             reason="needs the 8 CPU devices that tests/conftest.py sets up")


SHARD_SHAPE = (16, 5, 3)
SHARD_KW = dict(convention="torch", momentum=0.3)  # n/(n − 1) needs the global n


@needs_8
@pytest.mark.parametrize("name", NAMES)
def test_shard_map_equals_global_batch(name):
    x = _data(SHARD_SHAPE, seed=27)
    p = _params(name, 3, seed=28)
    stats = _stats(3, seed=29)._replace(count=jnp.asarray(4, jnp.int32))
    w = np.random.default_rng(30).standard_normal(SHARD_SHAPE)

    def local(x, p, stats):
        return call(name, x, p, stats, training=True, axis_name="d", **SHARD_KW)

    sharded = jax.shard_map(local, mesh=_mesh(), in_specs=(P("d"), P(), P()),
                            out_specs=(P("d"), P()))

    def whole(x, p):
        return call(name, x, p, stats, training=True, **SHARD_KW)

    with jax.set_mesh(_mesh()):  # the loss's cotangent lives on the mesh too
        run = loss_and_grads(lambda x, p: sharded(x, p, stats), w)(_shard(x), p)
    y, new = assert_same_run(run, loss_and_grads(whole, w)(x, p), p)
    assert int(new.count) == 5
    np.testing.assert_allclose(y, paper(name, x, p, stats, training=True), **TOL)
    assert_stats(new, *paper_running(stats, x, **SHARD_KW))


@needs_8
@pytest.mark.parametrize("name", NAMES)
def test_jit_sharded_batch_equals_unsharded(name):
    """No axis_name: XLA partitions the batch reduction of a batch split over 8 devices."""
    x = _data(SHARD_SHAPE, seed=31)
    p = _params(name, 3, seed=32)
    stats = _stats(3, seed=33)
    # Inference reduces over no batch axis; checked once (SwitchNorm's IN and LN terms).
    for training in (True, False) if name == "switchable_norm" else (True,):
        f = jitted(name, **settings(training, **SHARD_KW))
        y, new = f(_shard(x), p, stats)
        y_ref, new_ref = f(x, p, stats)
        np.testing.assert_allclose(y, y_ref, **TOL)
        np.testing.assert_allclose(y, paper(name, x, p, stats, training=training), **TOL)
        assert_stats(new, new_ref.mean, new_ref.var)
        if training:
            assert_stats(new, *paper_running(stats, x, **SHARD_KW))


# ------------------------------------------------------ 5. transformations --
# Eager on one small shape throughout, so the primitives compiled for one test serve the next.

SMALL = (4, 2, 3)  # (N, L, C)


def _small(name, training=True):
    """Data, parameters and stats; for B0 the max is at least 0.2 from a tie (eps is 1e-4)."""
    x = _data(SMALL, seed=156)
    p = _params(name, 3, seed=1156)
    stats = _stats(3, seed=2156)
    if name == "evonorm_b0":
        _, left, right = paper_evonorm_b0(x, None, None, p["v"], stats.var, training=training)
        assert np.abs(left - right).min() > 0.2
        assert np.any(left > right) and np.any(right > left)
    return x, p, stats


# SwitchNorm first: the primitives it compiles serve EvoNorm-B0's check as well.
@pytest.mark.parametrize("name, training", [
    ("switchable_norm", True), ("switchable_norm", False), ("evonorm_b0", True), ("evonorm_b0", False)])
def test_check_grads_order2(name, training):
    """x, scale, bias and v (B0) or both logits (SwitchNorm), through the batch statistics."""
    x, p, stats = _small(name, training)
    keys = tuple(p)

    def f(x, *vals):
        return call(name, x, dict(zip(keys, vals)), stats, training=training)[0]

    check_grads(jax.jit(f), (x, *(p[k] for k in keys)), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name, training):
    x, p, stats = _small(name, training)
    kw = settings(training, momentum=0.9)
    y, new = call(name, x, p, stats, **kw)
    y_jit, new_jit = jitted(name, **kw)(x, p, stats)
    np.testing.assert_allclose(y_jit, y, **TOL)
    assert_stats(new_jit, new.mean, new.var)
    np.testing.assert_allclose(y, paper(name, x, p, stats, training=training), **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_new_stats_carry_no_gradient(name):
    x, p, stats = _small(name)
    for field in ("mean", "var"):
        def g(x, p):
            return jnp.sum(getattr(call(name, x, p, stats, training=True, momentum=0.5)[1], field))

        value, (gx, gp) = jax.value_and_grad(g, argnums=(0, 1))(x, p)
        np.testing.assert_array_equal(gx, np.zeros_like(x))
        for k in p:
            np.testing.assert_array_equal(gp[k], np.zeros_like(p[k]))
        # The statistics do depend on x: the zero is stop_gradient, not a constant.
        moved = g(x * np.linspace(0.5, 2.0, x.size).reshape(x.shape), p)
        assert abs(float(moved) - float(value)) > 1e-3


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_constant_input_finite(name, training):
    _, p, stats = _small(name)
    x = np.full(SMALL, 2.5)
    if name == "evonorm_b0":
        p["v"] = np.array([1.0, -1.0, 0.5])  # both branches of the max
    y, new = call(name, x, p, stats, training=training)
    assert np.isfinite(y).all() and np.isfinite(new.mean).all() and np.isfinite(new.var).all()
    np.testing.assert_allclose(y, paper(name, x, p, stats, training=training), **TOL)
    if training:
        assert_stats(new, *paper_running(stats, x))
    w = np.random.default_rng(42).standard_normal(SMALL)
    gx, gp = jax.grad(lambda x, p: jnp.sum(call(name, x, p, stats, training=training)[0] * w),
                      argnums=(0, 1))(x, p)
    assert np.isfinite(gx).all()
    assert all(np.isfinite(g).all() for g in gp.values())


# ----------------------------------------------------------------- 6. errors --

NHWC = (2, 4, 4, 3)


def _err_call(name, shape=NHWC, x=None, *, stats=None, training=True, **kw):
    ca = kw.get("channel_axis", -1)
    c = shape[ca] if -len(shape) <= ca < len(shape) else shape[-1]
    x = jnp.ones(shape, jnp.float32) if x is None else x
    stats = jn.BatchStats.init(c) if stats is None else stats
    if name == "evonorm_b0":
        v = kw.pop("v", None)
        return jn.evonorm_b0(x, None, None, v, stats, training=training, **kw)
    return jn.switchable_norm(x, None, None, stats, training=training, **kw)


def _case(name, kw, exc, match, shape=NHWC, id=None):
    return pytest.param(name, shape, kw, exc, match, id=f"{name}-{id}")


_STATS4 = jn.BatchStats.init(4)
_STATS_BAD_VAR = jn.BatchStats(jnp.zeros(3), jnp.ones(4))

ERROR_CASES = [
    _case("evonorm_b0", dict(v=jnp.ones(4)), ValueError,
          r"^evonorm_b0: v must have shape \(3,\) \(per channel\) for an input of shape "
          r"\(2, 4, 4, 3\), got shape \(4,\)", id="v-(4,)"),
    _case("evonorm_b0", dict(v=jnp.ones((2, 3))), ValueError,
          r"^evonorm_b0: v must have shape \(3,\) \(per channel\).*got shape \(2, 3\)", id="v-(2,3)"),
    _case("evonorm_b0", dict(v=jnp.ones((1, 1, 1, 3))), ValueError,
          r"^evonorm_b0: v must have shape \(3,\).*never broadcast", id="v-(1,1,1,3)"),
    _case("evonorm_b0", dict(v=jnp.ones(3, jnp.int32)), TypeError,
          r"^evonorm_b0: v must be floating point, got dtype int32", id="v-int"),
    _case("switchable_norm", dict(mean_logits=jnp.zeros(2)), ValueError,
          r"^switchable_norm: mean_logits must have shape \(3,\) \(one logit per source "
          r"\(instance, layer, batch\)\).*got shape \(2,\)", id="mean_logits-(2,)"),
    _case("switchable_norm", dict(var_logits=jnp.zeros((1, 3))), ValueError,
          r"^switchable_norm: var_logits must have shape \(3,\).*got shape \(1, 3\)",
          id="var_logits-(1,3)"),
    _case("switchable_norm", dict(var_logits=jnp.zeros(4)), ValueError,
          r"^switchable_norm: var_logits must have shape \(3,\).*got shape \(4,\)", id="var_logits-(4,)"),
    _case("switchable_norm", dict(mean_logits=jnp.zeros(3, jnp.int32)), TypeError,
          r"^switchable_norm: mean_logits must be floating point", id="mean_logits-int"),
]
for _name in NAMES:
    ERROR_CASES += [
        _case(_name, dict(batch_axis=-1), ValueError,
              rf"^{_name}: batch_axis=-1 is the channel axis of an input of shape \(2, 4, 4, 3\) "
              r"\(channel_axis=-1\); pass the batch axis, or batch_axis=None", id="batch_axis=-1"),
        _case(_name, dict(batch_axis=1, channel_axis=1), ValueError,
              rf"^{_name}: batch_axis=1 is the channel axis of an input of shape \(2, 3, 4, 4\)",
              shape=(2, 3, 4, 4), id="nchw-batch_axis=1"),
        _case(_name, dict(batch_axis=4), ValueError,
              rf"^{_name}: batch_axis=4 is out of range for an input of rank 4 \(shape \(2, 4, 4, 3\)\); "
              r"use a value in \[-4, 3\]", id="batch_axis=4"),
        _case(_name, dict(batch_axis=-5), ValueError,
              rf"^{_name}: batch_axis=-5 is out of range", id="batch_axis=-5"),
        _case(_name, dict(batch_axis=0.0), TypeError, rf"^{_name}: batch_axis must be an int",
              id="batch_axis-float"),
        _case(_name, dict(training=1), TypeError,
              rf"^{_name}: training must be a Python bool, got 1 of type int", id="training=1"),
        # training=np.True_ is accepted (issue 23 item 6): tests/fuzz/test_regressions_issue23.py.
        _case(_name, dict(training=None), TypeError,
              rf"^{_name}: training must be a Python bool, got None", id="training-None"),
        _case(_name, dict(axis_name="b"), ValueError,
              rf"^{_name}: axis_name='b' is not bound by any enclosing transformation", id="unbound"),
        _case(_name, dict(stats=_STATS4), ValueError,
              rf"^{_name}: stats.mean must have shape \(3,\) for an input of shape \(2, 4, 4, 3\) "
              r"with 3 channels, got shape \(4,\)", id="stats-(4,)"),
        _case(_name, dict(stats=_STATS_BAD_VAR), ValueError,
              rf"^{_name}: stats.var must have shape \(3,\)", id="stats.var-(4,)"),
        _case(_name, dict(stats=(jnp.zeros(3),)), TypeError,
              rf"^{_name}: stats must be a jaxnorm.BatchStats\(mean, var\)", id="stats-1-tuple"),
        _case(_name, dict(axis_index_groups=[[0]]), ValueError,
              rf"^{_name}: axis_index_groups=\[\[0\]\] needs an axis_name", id="groups-no-axis"),
        _case(_name, dict(momentum=1.5), ValueError,
              rf"^{_name}: momentum must lie in \[0, 1\], got momentum=1.5", id="momentum=1.5"),
        _case(_name, dict(convention="jax"), ValueError,
              rf"^{_name}: convention must be 'flax' or 'torch', got 'jax'", id="convention"),
        _case(_name, dict(epsilon=-1e-5), ValueError,
              rf"^{_name}: epsilon must be a finite number >= 0", id="epsilon<0"),
        _case(_name, dict(channel_axis=4), ValueError,
              rf"^{_name}: channel_axis=4 is out of range", shape=(2, 4, 4, 3), id="channel_axis=4"),
        _case(_name, dict(), ValueError,
              rf"^{_name}: expected more than 1 value per channel when training, got input shape "
              r"\(1, 3\)", shape=(1, 3), id="single-(1,3)"),
        _case(_name, dict(), ValueError,
              rf"^{_name}: expected more than 1 value per channel when training", shape=(1, 1, 1, 3),
              id="single-(1,1,1,3)"),
    ]


@pytest.mark.parametrize("name, shape, kw, exc, match", ERROR_CASES)
def test_errors_at_trace_time(name, shape, kw, exc, match):
    with pytest.raises(exc, match=match):
        _err_call(name, shape, **dict(kw))
    with pytest.raises(exc, match=match):  # at trace time under jit, x a traced argument
        jax.jit(lambda x: _err_call(name, shape, x, **dict(kw)))(jnp.ones(shape, jnp.float32))


@pytest.mark.parametrize("name", NAMES)
def test_single_value_per_channel_counts_members(name):
    """One (C,) example per vmap member: an error with 1 member, fine with 2 (and in inference)."""
    def mapped(x, training=True):
        return jax.vmap(lambda xi: _err_call(name, (3,), xi, training=training, batch_axis=None,
                                             axis_name="b"), axis_name="b", out_axes=(0, None))(x)

    x = jnp.asarray(np.random.default_rng(43).standard_normal((2, 3)))
    with pytest.raises(ValueError, match=rf"^{name}: expected more than 1 value per channel when "
                                         r"training, got input shape \(3,\) \(channel_axis=-1, 1 "
                                         r"member\(s\) across axis_name='b'\)"):
        jax.jit(mapped)(x[:1])
    for training in (True, False):
        y, _ = jax.jit(functools.partial(mapped, training=training))(x[:1] if not training else x)
        assert np.isfinite(y).all()
