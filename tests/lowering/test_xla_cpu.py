"""XLA:CPU steering (jaxnorm._lowering.xla_cpu): views that change no value, the YNNPACK threshold, and what they buy."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm._lowering.per_platform import tracing
from jaxnorm._lowering.xla_cpu import split_view, unview, view


@pytest.mark.parametrize("shape", [(16, 5, 3), (6, 8), (3, 5, 7), (4, 1, 9), (7,), (12, 2, 2, 4)])
def test_views_round_trip_and_broadcast_alike(shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    stat = jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)   # size 1 off axis 0
    row = jnp.sum(x, axis=0, keepdims=True)                            # size 1 on axis 0
    views = [lambda t, k=k: view(t, k, x) for k in (0, 1, 2)] + [lambda t: split_view(t, x)]
    shapes = set()
    with tracing("accelerator"):  # the identity outside the CPU program
        assert all(v(x) is x for v in views)
    with tracing("cpu"):
        _check_views(x, stat, row, views, shapes)
    assert len(shapes) == len(views), shapes  # each view a distinct HLO shape


def _check_views(x, stat, row, views, shapes):
    for v in views:
        vx = v(x)
        shapes.add(vx.shape)
        assert vx.size == x.size
        np.testing.assert_array_equal(unview(vx, x.shape), x)
        # Arrays broadcastable to x stay broadcastable in the same view.
        np.testing.assert_array_equal(unview(vx - v(stat) + v(row), x.shape), x - stat + row)


def test_few_sets_follows_the_ynnpack_element_threshold():
    from jaxnorm._lowering.xla_cpu import YNN_MIN_ELEMENTS, few_sets

    x = jnp.ones((2, 3))
    with tracing("cpu"):
        assert few_sets(YNN_MIN_ELEMENTS - 1, x)
        assert not few_sets(YNN_MIN_ELEMENTS, x)
    with tracing("accelerator"):
        assert not few_sets(YNN_MIN_ELEMENTS - 1, x)


@pytest.mark.parametrize("scheme, rows, moved", [
    ("layer_norm", 1024, 8), ("layer_norm", 4096, 8), ("rms_norm", 1024, 6), ("rms_norm", 4096, 6),
])
def test_row_norm_backward_keeps_no_full_size_temporary_for_few_rows(scheme, rows, moved):
    """Fewer than 4096 rows: the per-row factors ride on full-size operands, so
    XLA:CPU still fuses the row sums with ``dx`` (before: 15x and 12x moved,
    with x̂ and γ·rstd·g stored), and the result matches float64."""
    import jax

    import jaxnorm
    from jaxnorm.bench.hlo_traffic import compiled_traffic

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, 96)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((rows, 96)), jnp.float32)
    s = jnp.asarray(1 + 0.1 * rng.standard_normal(96), jnp.float32)
    b = jnp.asarray(0.1 * rng.standard_normal(96), jnp.float32)
    norm = getattr(jaxnorm, scheme)
    apply = (lambda x, s, b: norm(x, s)) if scheme == "rms_norm" else norm
    grad = jax.jit(jax.grad(lambda x, s, b, c: jnp.sum(apply(x, s, b) * c), argnums=(0, 1, 2)))
    assert compiled_traffic(grad, x, s, b, c, like=x) == moved
    if jax.default_backend() != "cpu" or rows >= 4096:
        return
    got = grad(x, s, b, c)
    with jax.enable_x64(True):
        want = grad(*(jnp.asarray(np.asarray(a), jnp.float64) for a in (x, s, b, c)))
    for g64, g32 in zip(want, got):
        err = np.linalg.norm(np.asarray(g32, np.float64) - np.asarray(g64))
        assert err <= 1e-6 * np.linalg.norm(np.asarray(g64))  # RMSNorm's bias gradient: 0 == 0


# The textbook/shifted switch (on_conditioning): the CPU program only.
def _moments(x, axes):
    import jax

    from jaxnorm._core.moments import Reduction, moments

    return jax.jit(lambda t: moments(t, Reduction(axes)))(x)


def test_well_conditioned_sets_take_the_textbook_branch_ill_conditioned_the_shifted(monkeypatch):
    monkeypatch.delenv("JAXNORM_CPU_LOWERING", raising=False)  # the CPU program's switch
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 4, 4, 16)).astype(np.float32)
    for mean, textbook in ((0.5, True), (1e3, False)):
        x = (mean + z).astype(np.float32)
        mo = _moments(x, (1, 2))
        # the textbook branch uses the mean as its shift; the shifted one, a sample
        sample = x[:, :1, :1, :]
        assert np.array_equal(np.asarray(mo.shift), sample) != textbook
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(mo.mean, x64.mean((1, 2), keepdims=True), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mo.var, x64.var((1, 2), keepdims=True), rtol=1e-5)


def test_one_ill_conditioned_set_sends_every_set_to_the_shifted_moments(monkeypatch):
    monkeypatch.delenv("JAXNORM_CPU_LOWERING", raising=False)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[3] += 1e4  # one row far from zero
    mo = _moments(x, (1,))
    np.testing.assert_array_equal(mo.shift, x[:, :1])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mo.var, x64.var(1, keepdims=True), rtol=1e-5)
