"""Exactness of the statistics core: float32 moments stay exact at large means, on any data.

Every test here runs twice (the ``program`` fixture of conftest.py): with the
CPU's own program, and with the accelerator program that XLA:GPU and
XLA:TPU compile, run on this CPU (``JAXNORM_CPU_LOWERING=accelerator``).
The per-operation checks (every case of ``tests/norm_cases.py`` at means 0
to 1e6, half precision, float64) are in ``tests/operation_contract.py``,
run against every implementation.
"""

import zlib

import numpy as np
import pytest

import jax.numpy as jnp

pytestmark = pytest.mark.usefixtures("program")


def rel_l2(y, ref):
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def test_float32_mean_1e6_large_groups():
    """A realistic activation: 4096 entries per group at mean 1e6."""
    import jaxnorm as jn
    from jaxnorm import reference

    rng = np.random.default_rng(2)
    x = (1e6 + rng.standard_normal((2, 16, 16, 64))).astype(np.float32)
    y = jn.group_norm(jnp.asarray(x), num_groups=4)
    assert rel_l2(y, reference.group_norm(x, num_groups=4)) < 1e-6


def test_the_shift_is_what_keeps_large_means_exact():
    """Measurement switch: without the shift the same code loses digits; the default keeps them."""
    import jax

    import jaxnorm
    from jaxnorm._core.moments import unshifted_statistics

    x = (1e4 + np.random.default_rng(5).standard_normal((8, 6, 6, 32))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    # jit caches by function, so each mode gets a function of its own
    with unshifted_statistics():
        textbook = jax.jit(lambda t: jaxnorm.layer_norm(t))(x)
    exact = jax.jit(lambda t: jaxnorm.layer_norm(t))(x)  # traced after the context: shifted again
    assert rel_l2(textbook, ref) > 1e-5
    assert rel_l2(exact, ref) < 1e-6


def test_vmap_over_mixed_conditioning_is_exact_per_example():
    import jax

    import jaxnorm

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 8, 8, 16)).astype(np.float32)
    x[1] += 1e4
    y = jax.vmap(jaxnorm.instance_norm)(x)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean((2, 3), keepdims=True)) / np.sqrt(x64.var((2, 3), keepdims=True) + 1e-5)
    for i in range(3):
        assert rel_l2(y[i], ref[i]) < 3e-7


# Five distributions, forward and gradient, against float64 formulas (independent of jaxnorm).
def _distribution(name, rng, shape):
    z = rng.standard_normal(shape)
    return {
        "gaussian": z,
        "uniform": rng.uniform(-np.sqrt(3), np.sqrt(3), shape),
        "post_relu": np.maximum(z, 0),
        "bimodal": 0.2 * z + np.where(rng.random(shape) < 0.5, -1.0, 1.0),
        "student_t3": rng.standard_t(3, shape),
    }[name]


def _sets(scheme, x):
    """(x viewed as (sets, entries), back) for the scheme's reduction sets; x is NHWC (4, 6, 6, 16)."""
    n, h, w, c = x.shape
    if scheme in ("layer_norm", "rms_norm"):
        return x.reshape(-1, c), lambda t: t.reshape(x.shape)
    if scheme == "batch_norm":
        return x.reshape(-1, c).T, lambda t: t.T.reshape(x.shape)
    groups = {"group_norm": 4, "instance_norm": c}[scheme]
    grouped = x.reshape(n, h * w, groups, c // groups).transpose(0, 2, 1, 3).reshape(n * groups, -1)
    back = lambda t: t.reshape(n, groups, h * w, c // groups).transpose(0, 2, 1, 3).reshape(x.shape)
    return grouped, back


def _float64_norm_and_grad(scheme, x, g, eps=1e-5):
    """y = x̂ and dx = rstd·(g − E[g] − x̂·E[g·x̂]) per set (uncentered for RMSNorm), float64."""
    xs, back = _sets(scheme, x.astype(np.float64))
    gs, _ = _sets(scheme, g.astype(np.float64))
    if scheme == "rms_norm":
        rstd = 1 / np.sqrt((xs * xs).mean(1, keepdims=True) + 1e-6)
        xhat = xs * rstd
        dx = rstd * (gs - xhat * (gs * xhat).mean(1, keepdims=True))
    else:
        mean = xs.mean(1, keepdims=True)
        rstd = 1 / np.sqrt(((xs - mean) ** 2).mean(1, keepdims=True) + eps)
        xhat = (xs - mean) * rstd
        dx = rstd * (gs - gs.mean(1, keepdims=True) - xhat * (gs * xhat).mean(1, keepdims=True))
    return back(xhat), back(dx)


_SCHEMES = {
    "layer_norm": lambda x: __import__("jaxnorm").layer_norm(x),
    "rms_norm": lambda x: __import__("jaxnorm").rms_norm(x),
    "group_norm": lambda x: __import__("jaxnorm").group_norm(x, num_groups=4),
    "instance_norm": lambda x: __import__("jaxnorm").instance_norm(x),
    "batch_norm": lambda x: __import__("jaxnorm").batch_norm(
        x, None, None, __import__("jaxnorm").BatchStats.init(x.shape[-1]), training=True)[0],
}


@pytest.mark.parametrize("scheme", sorted(_SCHEMES))
@pytest.mark.parametrize("dist", ["gaussian", "uniform", "post_relu", "bimodal", "student_t3"])
def test_exact_on_five_distributions_forward_and_gradient(scheme, dist):
    """≤ 1e-6 relative error (L2) in float32 at means 0 to 1e6, output and input gradient."""
    import jax

    f = _SCHEMES[scheme]
    forward = jax.jit(lambda x: f(x))  # a fresh function: traced for this test's program
    backward = jax.jit(jax.grad(lambda x, g: jnp.sum(f(x) * g)))
    # A fixed draw per test (Python's hash() of strings changes from process to process).
    rng = np.random.default_rng(zlib.crc32(f"{scheme}-{dist}".encode()))
    for mean in (0.0, 1e2, 1e4, 1e6):
        x = (mean + _distribution(dist, rng, (4, 6, 6, 16))).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        y_ref, dx_ref = _float64_norm_and_grad(scheme, x, g)
        assert rel_l2(forward(x), y_ref) < 1e-6, (mean, "forward")
        assert rel_l2(backward(x, g), dx_ref) < 1e-6, (mean, "gradient")


@pytest.mark.parametrize("outlier", [3.0, 30.0, 1000.0])
def test_worst_case_most_samples_outliers(program, outlier):
    """The accelerator program's shift is the median of a few sampled entries of each set
    (LayerNorm: 5 per row). Where 3 of them are outliers the shift lies z standard deviations
    from the mean and the one-pass variance keeps about 1e-7·(1 + z²) (README, Numerics);
    the CPU program's two-pass moments do not depend on the shift."""
    import jax

    import jaxnorm

    n = 256
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, n))
    x[:, [0, n // 4, n // 2]] = outlier  # three of the five sampled positions
    x = (1e4 + x).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    z = np.max(np.abs(outlier - (x64 - 1e4).mean(1)) / x64.std(1))
    err = rel_l2(jax.jit(lambda t: jaxnorm.layer_norm(t))(x), ref)
    assert err < 1e-7 * (1 + z * z)
    if program == "cpu":
        assert err < 1e-6


@pytest.mark.parametrize("scheme", ["instance_norm", "group_norm_one_group_per_channel"])
@pytest.mark.parametrize("mean", [1e2, 1e4, 1e6])
def test_traced_broadcast_mask_stays_exact_under_jit(scheme, mean):
    """Issue 23, item 1: a mask passed to jit as an argument, spanning the reduced axes with
    size 1 on the channel axis ((1, H, 1) here), lost digits in the CPU program (0.28 at mean
    1e6): its shift was a computed masked mean, which XLA:CPU contracted differently in the
    mean's kernel and in the output's. The shift is now an entry of x."""
    import jax

    import jaxnorm as jn

    rng = np.random.default_rng(13)
    x = (mean + rng.standard_normal((4, 3, 6))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    mask = np.ones((1, 3, 1), bool)
    if scheme == "instance_norm":
        f = lambda x, m: jn.instance_norm(x, where=m)  # noqa: E731
    else:
        f = lambda x, m: jn.group_norm(x, num_groups=6, where=m)  # noqa: E731
    y_ref, dx_ref = _float64_norm_and_grad_over(x, g, axis=1)
    y = jax.jit(f)(x, mask)
    dx = jax.jit(jax.grad(lambda x, m: jnp.sum(f(x, m) * g)))(x, mask)
    assert rel_l2(y, y_ref) < 1e-6
    assert rel_l2(dx, dx_ref) < 1e-6


def _float64_norm_and_grad_over(x, g, axis, eps=1e-5):
    x, g = x.astype(np.float64), g.astype(np.float64)
    mean = x.mean(axis, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dx = rstd * (g - g.mean(axis, keepdims=True) - xhat * (g * xhat).mean(axis, keepdims=True))
    return xhat, dx
