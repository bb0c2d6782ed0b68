"""Batch Renormalization (Ioffe 2017): oracle, BatchNorm limit, stop-gradient, schedule.

The oracle is ``jaxnorm.reference.batch_renorm``, a float64 NumPy
transcription of the paper's Algorithm 1. Training is run over several steps,
feeding each step's running statistics back in (both into jaxnorm and into
the reference, each its own), in two regimes:

* ``clipped`` / ``clipped_low``: running statistics far from the batch's
  (sigma 5 times smaller / larger) and tight bounds (``r_max=1.2,
  d_max=0.3``), so r sits at r_max / 1/r_max and d at ±d_max;
* ``free``: running statistics near the batch's and loose bounds, so r and d
  are strictly inside them.

Each test computes r and d itself (from the batch and the running statistics
it fed in) to check that the regime is what it claims to be.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnorm import reference
import jaxnorm as jn

STEPS = 4
MOMENTUM = 0.9  # makes the running statistics move visibly within STEPS steps
TOL = dict(rtol=1e-12, atol=1e-12)

# Jitted with the settings static: one compilation per call signature instead
# of one per primitive in eager mode, which keeps the file fast. Eager calls
# remain where the test is about them (errors, concrete schedule values).
_SETTINGS = ("training", "r_max", "d_max", "momentum", "epsilon", "channel_axis", "axis_name")
renorm = jax.jit(jn.batch_renorm, static_argnames=_SETTINGS)
batch_norm = jax.jit(jn.batch_norm, static_argnames=("training", "momentum", "epsilon", "channel_axis"))

# name -> (shape, channel_axis)
LAYOUTS = {
    "nchw": ((4, 3, 5, 5), 1),
    "nc": ((64, 3), -1),
    "nhwc": ((4, 5, 5, 3), -1),
}

# name -> (r_max, d_max, offset of the running mean from the batch mean in
# units of sigma, ratio running sigma / batch sigma). The running statistics
# are set from the first batch's statistics so the regime holds at every step.
REGIMES = {
    "clipped": (1.2, 0.3, 4.0, 0.2),  # r = sigma_B/sigma ~ 5 > 1.2, |d| ~ 4 > 0.3
    "clipped_low": (1.2, 0.3, 4.0, 5.0),  # r ~ 0.2 < 1/1.2, |d| ~ 4 > 0.3
    "free": (3.0, 5.0, 0.8, 1.5),  # r ~ 0.67 in (1/3, 3), |d| ~ 0.8 < 5
}


def _channels_last(a, channel_axis):
    return np.moveaxis(np.asarray(a, np.float64), channel_axis, -1).reshape(-1, np.shape(a)[channel_axis])


def _batch_stats(x, channel_axis, eps=1e-5):
    """(mu_B, sigma_B) per channel, float64, two passes."""
    rows = _channels_last(x, channel_axis)
    mu = rows.mean(0)
    return mu, np.sqrt(((rows - mu) ** 2).mean(0) + eps)


def _r_d(x, mean, var, channel_axis, eps=1e-5):
    """Unclipped r = sigma_B / sigma and d = (mu_B - mu) / sigma."""
    mu_b, sigma_b = _batch_stats(x, channel_axis, eps)
    sigma = np.sqrt(np.asarray(var, np.float64) + eps)
    return sigma_b / sigma, (mu_b - np.asarray(mean, np.float64)) / sigma


def _batches(seed, shape, channel_axis, n=STEPS):
    """n batches with per-channel offsets and spreads that drift a little per step."""
    rng = np.random.default_rng(seed)
    c = shape[channel_axis]
    place = [1] * len(shape)
    place[channel_axis] = c
    loc = rng.uniform(-3, 3, c).reshape(place)
    spread = rng.uniform(0.5, 2.0, c).reshape(place)
    return [
        loc + 0.05 * k + spread * (1 + 0.02 * k) * rng.standard_normal(shape)
        for k in range(n)
    ], rng


def _regime_stats(x0, channel_axis, offset, ratio, eps=1e-5):
    """Running stats with mean mu_B + offset*sigma and sigma = ratio*sigma_B."""
    mu_b, sigma_b = _batch_stats(x0, channel_axis, eps)
    sigma = ratio * sigma_b
    signs = np.where(np.arange(mu_b.size) % 2 == 0, 1.0, -1.0)
    return jn.BatchStats(mu_b - signs * offset * sigma, sigma**2 - eps)


def _check_regime(regime, r, d, r_max, d_max):
    if regime.startswith("clipped"):
        assert np.all((r > r_max * 1.5) | (r < 1 / (r_max * 1.5))), r
        assert np.all(np.abs(d) > 1.5 * d_max), d
    else:
        assert np.all((r < r_max / 1.5) & (r > 1.5 / r_max)), r
        assert np.all(np.abs(d) < d_max / 1.5), d
        assert np.all(np.abs(r - 1) > 0.05) and np.all(np.abs(d) > 0.05), (r, d)  # not BatchNorm


# ----------------------------------------------------------------- oracle --


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("regime", list(REGIMES))
def test_training_steps_and_inference_match_reference(layout, regime):
    shape, channel_axis = LAYOUTS[layout]
    r_max, d_max, offset, ratio = REGIMES[regime]
    xs, rng = _batches(0, shape, channel_axis)
    c = shape[channel_axis]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    stats = _regime_stats(xs[0], channel_axis, offset, ratio)
    ref_mean, ref_var = np.asarray(stats.mean), np.asarray(stats.var)
    settings = dict(r_max=r_max, d_max=d_max, momentum=MOMENTUM, channel_axis=channel_axis)
    step = jax.jit(lambda x, s: jn.batch_renorm(x, scale, bias, s, training=True, **settings))

    for x in xs:
        r, d = _r_d(x, stats.mean, stats.var, channel_axis)
        _check_regime(regime, r, d, r_max, d_max)
        y, new = step(jnp.asarray(x), stats)
        y_ref, ref_mean, ref_var = reference.batch_renorm(
            x, scale, bias, ref_mean, ref_var, training=True, **settings)
        assert y.dtype == jnp.float64 and y.shape == shape
        np.testing.assert_allclose(y, y_ref, **TOL)
        np.testing.assert_allclose(new.mean, ref_mean, **TOL)
        np.testing.assert_allclose(new.var, ref_var, **TOL)
        assert not np.allclose(new.mean, stats.mean)  # the statistics did move
        stats = new

    x = jnp.asarray(xs[-1] + 0.5)
    y, same = renorm(x, scale, bias, stats, training=False, **settings)
    y_ref, _, _ = reference.batch_renorm(x, scale, bias, ref_mean, ref_var, training=False, **settings)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_array_equal(same.mean, stats.mean)  # returned unchanged
    np.testing.assert_array_equal(same.var, stats.var)


def test_clipping_changes_the_output():
    """Sanity of the oracle test: the clipped and unclipped outputs differ."""
    shape, channel_axis = LAYOUTS["nchw"]
    xs, _ = _batches(1, shape, channel_axis, n=1)
    stats = _regime_stats(xs[0], channel_axis, 4.0, 0.2)
    tight, _ = renorm(xs[0], None, None, stats, training=True, r_max=1.2, d_max=0.3,
                               channel_axis=channel_axis)
    loose, _ = renorm(xs[0], None, None, stats, training=True, r_max=100.0, d_max=100.0,
                               channel_axis=channel_axis)
    assert np.abs(np.asarray(tight) - np.asarray(loose)).max() > 1.0


# ------------------------------------------------------- BatchNorm limit --


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_r_max_1_d_max_0_is_batch_norm(layout):
    shape, channel_axis = LAYOUTS[layout]
    xs, rng = _batches(2, shape, channel_axis, n=1)
    c = shape[channel_axis]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    stats = _regime_stats(xs[0], channel_axis, 4.0, 0.2)  # far away: r, d would be large
    y, new = renorm(xs[0], scale, bias, stats, training=True, r_max=1, d_max=0,
                             channel_axis=channel_axis)
    y_bn, new_bn = batch_norm(xs[0], scale, bias, stats, training=True, channel_axis=channel_axis)
    np.testing.assert_allclose(y, y_bn, rtol=1e-14, atol=1e-14)  # same formula, rounding apart
    np.testing.assert_allclose(new.mean, new_bn.mean, **TOL)  # the variance update differs (sigma)


# ---------------------------------------------------------- gradients --


def _grad_inputs(seed=3):
    shape, channel_axis = (6, 4, 3), -1
    xs, rng = _batches(seed, shape, channel_axis, n=1)
    c = shape[channel_axis]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    weights = rng.standard_normal(shape)  # a loss that is not invariant to the normalization
    return xs[0], scale, bias, weights, channel_axis


def test_r_and_d_carry_no_gradient():
    """grad equals that of y = ((x − μ_B)/σ_B · r + d)·g + b with r, d constants."""
    x, scale, bias, w, channel_axis = _grad_inputs()
    r_max, d_max, eps = 3.0, 5.0, 1e-5
    stats = _regime_stats(x, channel_axis, 0.8, 1.5)
    r, d = _r_d(x, stats.mean, stats.var, channel_axis)
    _check_regime("free", r, d, r_max, d_max)  # unclipped: r and d depend on x

    def loss(x, g):
        y, _ = jn.batch_renorm(x, g, bias, stats, training=True, r_max=r_max, d_max=d_max)
        return jnp.sum(w * y**2) + jnp.sum(w * y)

    def by_hand(x, g, r, d):
        mu = jnp.mean(x, axis=(0, 1))
        sigma = jnp.sqrt(jnp.mean((x - mu) ** 2, axis=(0, 1)) + eps)
        y = ((x - mu) / sigma * r + d) * g + bias
        return jnp.sum(w * y**2) + jnp.sum(w * y)

    def r_d_traced(x):
        mu = jnp.mean(x, axis=(0, 1))
        sigma_b = jnp.sqrt(jnp.mean((x - mu) ** 2, axis=(0, 1)) + eps)
        sigma = jnp.sqrt(stats.var + eps)
        return sigma_b / sigma, (mu - stats.mean) / sigma

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, scale)
    want = jax.jit(jax.grad(by_hand, argnums=(0, 1)))(x, scale, r, d)
    np.testing.assert_allclose(loss(x, scale), by_hand(x, scale, r, d), **TOL)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)
    # The check is sensitive: letting the gradient flow through r and d differs.
    leaky = jax.jit(jax.grad(lambda x: by_hand(x, scale, *r_d_traced(x))))(x)
    assert np.abs(np.asarray(leaky) - np.asarray(got[0])).max() > 1e-3


def test_check_grads_order2_clipped():
    """r and d clipped at their bounds, so locally constant: check_grads applies."""
    x, scale, bias, _, channel_axis = _grad_inputs(4)
    r_max, d_max = 1.2, 0.3
    stats = _regime_stats(x, channel_axis, 4.0, 0.2)
    r, d = _r_d(x, stats.mean, stats.var, channel_axis)
    _check_regime("clipped", r, d, r_max, d_max)

    def f(x, g, b):
        return jn.batch_renorm(x, g, b, stats, training=True, r_max=r_max, d_max=d_max)[0]

    check_grads(f, (x, scale, bias), order=2, modes=("fwd", "rev"))


def test_check_grads_order2_inference():
    x, scale, bias, _, _ = _grad_inputs(5)
    stats = jn.BatchStats(np.array([0.5, -1.0, 2.0]), np.array([0.7, 2.0, 1.5]))

    def f(x, g, b):
        return jn.batch_renorm(x, g, b, stats, training=False)[0]

    check_grads(f, (x, scale, bias), order=2, modes=("fwd", "rev"))


# ----------------------------------------------------------- schedule --

PAPER = dict(r_max=3.0, d_max=5.0, warmup_steps=5000, r_max_steps=40000, d_max_steps=25000)


@pytest.mark.parametrize("step, r_max, d_max", [
    (0, 1.0, 0.0),
    (5000, 1.0, 0.0),  # end of warm-up: still plain BatchNorm
    (15000, 1.0 + 2.0 * 10000 / 35000, 5.0 * 10000 / 20000),  # both ramping
    (25000, 1.0 + 2.0 * 20000 / 35000, 5.0),  # d_max reached, r_max still ramping
    (30000, 1.0 + 2.0 * 25000 / 35000, 5.0),
    (40000, 3.0, 5.0),
    (10**6, 3.0, 5.0),
])
def test_schedule_values(step, r_max, d_max):
    r, d = jn.batch_renorm_schedule(step, **PAPER)
    np.testing.assert_allclose(float(r), r_max, rtol=1e-6)
    np.testing.assert_allclose(float(d), d_max, rtol=1e-6, atol=1e-6)
    # Defaults are the paper's values.
    r2, d2 = jn.batch_renorm_schedule(step)
    assert float(r2) == float(r) and float(d2) == float(d)


def test_schedule_under_jit_with_traced_step():
    sched = jax.jit(lambda s: jn.batch_renorm_schedule(s, **PAPER))
    steps = [0, 5000, 15000, 25000, 10**6]
    for s in steps:
        r, d = sched(jnp.int32(s))
        er, ed = jn.batch_renorm_schedule(s, **PAPER)
        assert float(r) == float(er) and float(d) == float(ed)
    # Over an array of steps too (vmap of the jitted schedule).
    rs, ds = jax.vmap(sched)(jnp.asarray(steps))
    np.testing.assert_allclose(rs, [1.0, 1.0, 1 + 2 / 3.5, 1 + 4 / 3.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(ds, [0.0, 0.0, 2.5, 5.0, 5.0], rtol=1e-6)


def test_traced_limits_inside_jit():
    """A jitted training step: schedule(step) feeds traced r_max, d_max into batch_renorm."""
    shape, channel_axis = LAYOUTS["nhwc"]
    xs, rng = _batches(6, shape, channel_axis, n=1)
    x = xs[0]
    c = shape[channel_axis]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    stats = _regime_stats(x, channel_axis, 4.0, 0.2)  # r and d want to be large

    @jax.jit
    def train_step(x, stats, step):
        r_max, d_max = jn.batch_renorm_schedule(step, **PAPER)
        return jn.batch_renorm(x, scale, bias, stats, training=True, r_max=r_max, d_max=d_max)

    y0, s0 = train_step(x, stats, jnp.int32(0))  # warm-up: BatchNorm
    y_bn, s_bn = batch_norm(x, scale, bias, stats, training=True)
    np.testing.assert_allclose(y0, y_bn, **TOL)
    np.testing.assert_allclose(s0.mean, s_bn.mean, **TOL)
    for step in (15000, 10**6):
        y, new = train_step(x, stats, jnp.int32(step))
        r_max, d_max = jn.batch_renorm_schedule(step, **PAPER)
        # Same as the eager call with the (concrete) schedule values...
        y_eager, new_eager = jn.batch_renorm(x, scale, bias, stats, training=True,
                                             r_max=r_max, d_max=d_max)
        np.testing.assert_allclose(y, y_eager, **TOL)
        np.testing.assert_allclose(new.var, new_eager.var, **TOL)
        # ...and as the reference with those values as floats (1/r_max in float32 vs 64).
        y_ref, m_ref, v_ref = reference.batch_renorm(x, scale, bias, stats.mean, stats.var,
                                                     training=True, r_max=float(r_max), d_max=float(d_max))
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new.mean, m_ref, **TOL)
        np.testing.assert_allclose(new.var, v_ref, **TOL)
        assert np.abs(np.asarray(y) - np.asarray(y0)).max() > 0.5  # clipping relaxed


# -------------------------------------------------------------- errors --


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(r_max=0.5), ValueError,
     r"^batch_renorm: r_max must be a finite number >= 1, got r_max=0\.5; r_max=1 disables"),
    (dict(r_max=float("inf")), ValueError, r"^batch_renorm: r_max must be a finite number >= 1, got r_max=inf"),
    (dict(d_max=-0.1), ValueError,
     r"^batch_renorm: d_max must be a finite number >= 0, got d_max=-0\.1; d_max=0 disables"),
    (dict(r_max=None), TypeError, r"^batch_renorm: r_max must be a number, got None; pass e\.g\. r_max=3\.0"),
    (dict(d_max="5"), TypeError, r"^batch_renorm: d_max must be a number, got '5'; pass e\.g\. d_max=5\.0"),
])
def test_batch_renorm_limit_errors(mode, kwargs, exc, match):
    x = jnp.ones((4, 3), jnp.float32)
    f = lambda x: jn.batch_renorm(x, None, None, jn.BatchStats.init(3), training=True, **kwargs)  # noqa: E731
    with pytest.raises(exc, match=match):
        f(x) if mode == "eager" else jax.jit(f)(x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_max_steps=5000), (r"^batch_renorm_schedule: d_max_steps=5000 must exceed warmup_steps=5000; "
                              r"the paper uses warmup_steps=5000, d_max_steps=25000, r_max_steps=40000")),
    (dict(d_max_steps=100), r"^batch_renorm_schedule: d_max_steps=100 must exceed warmup_steps=5000"),
    (dict(r_max_steps=4000), r"^batch_renorm_schedule: r_max_steps=4000 must exceed warmup_steps=5000"),
    (dict(warmup_steps=30000), r"^batch_renorm_schedule: d_max_steps=25000 must exceed warmup_steps=30000"),
])
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jn.batch_renorm_schedule(10, **kwargs)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda s: jn.batch_renorm_schedule(s, **kwargs))(jnp.int32(10))


def test_stats_shape_error():
    x = jnp.ones((4, 3), jnp.float32)
    with pytest.raises(ValueError, match=re.escape("batch_renorm: stats.mean must have shape (3,)")):
        jn.batch_renorm(x, None, None, jn.BatchStats.init(4), training=True)


# ----------------------------------------------------------- exactness --


@pytest.mark.parametrize("mean", [1e4, 1e6])
def test_float32_large_mean_exact(mean):
    """Unit spread at a large mean, running stats near the batch (d active, not clipped)."""
    rng = np.random.default_rng(7)
    c = 4
    x = (mean + np.linspace(-0.5, 0.5, c) + rng.standard_normal((8, 6, 6, c))).astype(np.float32)
    mu_b, sigma_b = _batch_stats(x, -1)
    stats = jn.BatchStats(jnp.asarray(mu_b + np.array([0.4, -0.3, 0.5, -0.6]), jnp.float32),
                          jnp.asarray((1.2 * sigma_b) ** 2, jnp.float32))
    r, d = _r_d(x, stats.mean, stats.var, -1)
    _check_regime("free", r, d, 3.0, 5.0)
    scale, bias = np.float32([1.0, 0.5, 2.0, 1.5]), np.float32([0.0, 1.0, -1.0, 0.5])
    y, new = renorm(jnp.asarray(x), scale, bias, stats, training=True)
    assert y.dtype == jnp.float32 and new.mean.dtype == jnp.float32
    y_ref, m_ref, v_ref = reference.batch_renorm(x, scale, bias, stats.mean, stats.var, training=True)
    y64 = np.asarray(y, np.float64)
    assert np.linalg.norm(y64 - y_ref) / np.linalg.norm(y_ref) < 1e-6
    # Running statistics: float32 rounding of the stored values only.
    np.testing.assert_allclose(new.mean, m_ref, rtol=1e-6)
    np.testing.assert_allclose(new.var, v_ref, rtol=1e-5)
    # Inference with the updated statistics, same bound.
    y, _ = renorm(jnp.asarray(x), scale, bias, new, training=False)
    y_ref, _, _ = reference.batch_renorm(x, scale, bias, new.mean, new.var, training=False)
    assert np.linalg.norm(np.asarray(y, np.float64) - y_ref) / np.linalg.norm(y_ref) < 1e-6


# ---------------------------------------------------------------- vmap --


@pytest.mark.parametrize("regime", list(REGIMES))
def test_vmap_with_axis_name_equals_batched(regime):
    shape, channel_axis = LAYOUTS["nhwc"]
    r_max, d_max, offset, ratio = REGIMES[regime]
    xs, rng = _batches(8, shape, channel_axis, n=1)
    x = xs[0]
    c = shape[channel_axis]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    stats = _regime_stats(x, channel_axis, offset, ratio)
    kw = dict(training=True, r_max=r_max, d_max=d_max, momentum=MOMENTUM)

    def per_example(xi, stats):
        return jn.batch_renorm(xi, scale, bias, stats, axis_name="batch", **kw)

    y, new = jax.jit(jax.vmap(per_example, in_axes=(0, None), out_axes=(0, None), axis_name="batch"))(x, stats)
    y_b, new_b = renorm(x, scale, bias, stats, **kw)
    np.testing.assert_allclose(y, y_b, **TOL)
    np.testing.assert_allclose(new.mean, new_b.mean, **TOL)
    np.testing.assert_allclose(new.var, new_b.var, **TOL)
    # Per-example scale (conditional) under vmap: each example gets its row.
    scales = rng.uniform(0.5, 1.5, (shape[0], c))
    y, _ = jax.jit(jax.vmap(lambda xi, si: jn.batch_renorm(xi, si, bias, stats, axis_name="batch", **kw),
                    out_axes=(0, None), axis_name="batch"))(x, scales)
    y_b, _ = renorm(x, scales, bias, stats, **kw)
    np.testing.assert_allclose(y, y_b, **TOL)


# ----------------------------------------------------- masks and count --


def test_masked_entries_left_out():
    """where=False rows (holding NaN) give 0 and are left out of every statistic."""
    rng = np.random.default_rng(9)
    x = rng.normal(3, 2, (10, 3))
    where = np.zeros((10, 1), bool)
    where[:6] = True
    x_nan = np.where(where, x, np.nan)
    stats = jn.BatchStats.init(3, jnp.float64)._replace(mean=jnp.asarray([-1.0, 0.0, 5.0]))
    kw = dict(training=True, r_max=1.2, d_max=0.3, momentum=MOMENTUM)
    y, new = renorm(x_nan, None, None, stats, where=jnp.asarray(where), **kw)
    y_ref, m_ref, v_ref = reference.batch_renorm(x[:6], None, None, stats.mean, stats.var, **kw)
    np.testing.assert_allclose(y[:6], y_ref, **TOL)
    np.testing.assert_array_equal(y[6:], 0.0)
    np.testing.assert_allclose(new.mean, m_ref, **TOL)
    np.testing.assert_allclose(new.var, v_ref, **TOL)
    assert int(new.count) == 1 and int(stats.count) == 0  # batches seen
    g = jax.jit(jax.grad(lambda x: jnp.sum(renorm(x, None, None, stats, where=jnp.asarray(where), **kw)[0] ** 2)))(x_nan)
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("kw", [{"r_max": np.array(0.5)}, {"r_max": jnp.float32(0.5)}, {"d_max": np.array(-1.0)}])
def test_concrete_array_limits_are_checked(kw):
    x = np.random.default_rng(0).normal(size=(8, 3))
    stats = jn.BatchStats(np.zeros(3), np.full(3, 4.0))
    with pytest.raises(ValueError, match=f"batch_renorm: {next(iter(kw))} must be a finite number"):
        jn.batch_renorm(x, None, None, stats, training=True, **kw)


@pytest.mark.parametrize("kw", [{"r_max": 0.5}, {"d_max": -1.0}])
def test_schedule_checks_its_final_bounds(kw):
    with pytest.raises(ValueError, match=f"batch_renorm_schedule: {next(iter(kw))} must be a finite number"):
        jn.batch_renorm_schedule(10**6, **kw)
