"""Views (jaxnorm._views): reshapes that steer XLA:CPU's fusion and change no value."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm._views import split_view, unview, view


@pytest.mark.parametrize("shape", [(16, 5, 3), (6, 8), (3, 5, 7), (4, 1, 9), (7,), (12, 2, 2, 4)])
def test_views_round_trip_and_broadcast_alike(shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    stat = jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)   # size 1 off axis 0
    row = jnp.sum(x, axis=0, keepdims=True)                            # size 1 on axis 0
    views = [lambda t, k=k: view(t, k, x) for k in (0, 1, 2)] + [lambda t: split_view(t, x)]
    shapes = set()
    for v in views:
        vx = v(x)
        shapes.add(vx.shape)
        assert vx.size == x.size
        np.testing.assert_array_equal(unview(vx, x.shape), x)
        # Arrays broadcastable to x stay broadcastable in the same view.
        np.testing.assert_array_equal(unview(vx - v(stat) + v(row), x.shape), x - stat + row)
    assert len(shapes) == len(views), shapes  # each view a distinct HLO shape
