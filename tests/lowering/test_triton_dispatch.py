"""The Triton dispatch: what ``implementation=`` chooses and how a call reaches the kernels.

Without a GPU the binding runs the kernels in Triton's interpreter through
``jax.pure_callback`` (TRITON_INTERPRET=1, set by conftest); on a GPU the
same tests run the compiled kernels through jax_triton. The kernels' values
and derivatives for every case of ``tests/norm_cases.py`` are checked by the
operation contract (``tests/operation_contract.py``, implementation
``triton``); here: the layouts the dispatch rearranges, the vmap rule with
shared and batched parameters, ``implementation=None`` never picking the
kernels, and unsupported calls raising.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

pytest.importorskip("triton")
pytest.importorskip("torch")
if jax.default_backend() != "gpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

RNG = np.random.default_rng(0)


def _arr(*shape, loc=0.0):
    return jnp.asarray(loc + RNG.standard_normal(shape), jnp.float32)


# Layouts the dispatch rearranges before the kernels see them (the operation
# contract, tests/operation_contract.py, runs every case of tests/norm_cases.py
# through the kernels; these two are the dispatch's own reshapes).
# name -> (function(x, params, implementation), x shape, parameter shapes)
CALLS = {
    # two trailing axes flattened into one row of features
    "layer_norm-2-axes": (lambda x, p, impl: jn.layer_norm(x, *p, axis=(-2, -1), implementation=impl),
                          (2, 3, 4, 5), [(4, 5), (4, 5)]),
    # parameters along some of the normalized axes (flax's LayerNorm(reduction_axes=(1, 2), feature_axes=-1)),
    # widened to the normalized axes' shape for the kernels
    "layer_norm-feature-axis-within": (
        lambda x, p, impl: jn.layer_norm(x, *p, axis=(-2, -1), feature_axes=-1, implementation=impl),
        (2, 2, 3), [(3,), (3,)]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_rearranged_layouts_equal_xla_values_and_gradients(name):
    f, shape, param_shapes = CALLS[name]
    x = _arr(*shape, loc=3.0)
    params = [_arr(*s) + 1 for s in param_shapes]
    w = _arr(*shape)

    def loss(impl, x, *params):
        return jnp.sum(f(x, params, impl) * w)

    y_t = jax.jit(lambda x, *p: f(x, p, "triton"))(x, *params)
    np.testing.assert_allclose(y_t, f(x, params, "xla"), rtol=1e-5, atol=1e-5)
    argnums = tuple(range(1 + len(params)))
    g_t = jax.jit(jax.grad(functools.partial(loss, "triton"), argnums=argnums))(x, *params)
    g_x = jax.grad(functools.partial(loss, "xla"), argnums=argnums)(x, *params)
    for a, b in zip(g_t, g_x):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_vmap_of_grad_with_shared_and_per_instance_scale():
    x = _arr(3, 2, 4, 6, loc=1.0)  # 3 instances of a (2, 4, 6) batch
    scale, bias, w = _arr(6) + 1, _arr(6), _arr(3, 2, 4, 6)
    scales = _arr(3, 6) + 1

    def grads(impl, scale_axis, scale):
        def loss(x, s, b, w):
            return jnp.sum(jn.group_norm(x, s, b, num_groups=2, implementation=impl) * w)
        return jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, scale_axis, None, 0))(x, scale, bias, w)

    for axis, s in [(None, scale), (0, scales)]:
        for a, b in zip(grads("triton", axis, s), grads("xla", axis, s)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_output_within_one_rounding():
    x = _arr(2, 4, 4, 8, loc=2.0).astype(jnp.bfloat16)
    y_t = jn.group_norm(x, num_groups=4, implementation="triton")
    y_x = jn.group_norm(x, num_groups=4, implementation="xla")
    assert y_t.dtype == jnp.bfloat16
    np.testing.assert_allclose(y_t.astype(jnp.float32), y_x.astype(jnp.float32), rtol=1e-2, atol=1e-2)


def test_automatic_choice_is_xla():
    """None is XLA on every platform until the kernels pass the GPU check (not a trace-time backend choice)."""
    x = _arr(2, 3, 6)
    jaxpr_auto = str(jax.make_jaxpr(lambda x: jn.group_norm(x, num_groups=3))(x))
    jaxpr_triton = str(jax.make_jaxpr(lambda x: jn.group_norm(x, num_groups=3, implementation="triton"))(x))
    assert "callback" not in jaxpr_auto and "callback" in jaxpr_triton


@pytest.mark.parametrize("call,match", [
    (lambda x: jn.group_norm(x, jnp.ones((2, 6)), num_groups=3, implementation="triton"),
     r"group_norm: implementation='triton' does not support a per-example scale of shape \(2, 1, 6\)"),
    (lambda x: jn.group_norm(x.astype(jnp.float64), num_groups=3, implementation="triton"),
     r"group_norm: implementation='triton' does not support dtype float64"),
    (lambda x: jn.group_norm(x.reshape(2, 3, 6, 1), num_groups=3, channel_axis=2, implementation="triton"),
     r"group_norm: implementation='triton' does not support channel_axis=2 \(channels first or last only\)"),
    (lambda x: jn.layer_norm(x, axis=1, implementation="triton"),
     r"layer_norm: implementation='triton' does not support axis=\(1,\) \(trailing axes only\)"),
])
def test_unsupported_calls_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(_arr(2, 3, 6))
