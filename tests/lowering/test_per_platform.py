"""Lowering per platform (jaxnorm._lowering.per_platform): no control flow off the CPU, the right program on each platform.

On XLA:GPU a conditional copies its predicate to the host and waits, and on
every platform it blocks fusion; a ``while`` loop likewise. These tests
export every public function and module, forward and gradient, under
``vmap`` and under ``jax.checkpoint``, for ``cuda``, ``rocm`` and ``tpu`` (on
this CPU machine: exporting needs no accelerator) and assert that the
StableHLO holds no ``case``, ``if`` or ``while``. A program exported for
several platforms must run each platform's own code: run on the CPU it gives
exactly (bitwise) what the CPU program gives, which differs in rounding from
the accelerator program (so the comparison can fail).
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax import export
from jax.test_util import check_grads

import jaxnorm as jn
from jaxnorm._lowering.per_platform import ENV_VAR, lower_per_platform
import jaxnorm.linen as jl
import jaxnorm.nnx as jx

ACCELERATORS = ["cuda", "rocm", "tpu"]
CONTROL_FLOW = ("stablehlo.case", "stablehlo.if", "stablehlo.while")
C = 8
X_SHAPE = (4, 6, 6, C)


def _x(mean=3.0, shape=X_SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(mean + 2 * rng.standard_normal(shape), jnp.float32)


def _control_flow(fn, *args):
    """``(platform, op)`` for each control-flow op in ``fn``'s StableHLO exported for each accelerator.

    One export per platform: an export for several platforms switches on the
    platform wherever JAX lowers a primitive differently on them.
    """
    jitted = jax.jit(fn)
    found = []
    for platform in ACCELERATORS:
        text = export.export(jitted, platforms=[platform])(*args).mlir_module()
        found += [(platform, op) for op in CONTROL_FLOW if op in text]
    return found


def _per_channel(value=1.0):
    return jnp.full((C,), value, jnp.float32)


_STATS = jn.BatchStats.init(C)
_RBN = dict(center_weight=_per_channel(0.1), scale_weight=_per_channel(0.2), scale_bias=_per_channel(1.0))

# Every public function, as x -> output (the running statistics left out).
FUNCTIONS = {
    "layer_norm": lambda x: jn.layer_norm(x, _per_channel(1.5), _per_channel(0.5)),
    "layer_norm_masked": lambda x: jn.layer_norm(x, where=(jnp.arange(C) < 5)[None, None, None, :]),
    "rms_norm": lambda x: jn.rms_norm(x, _per_channel(1.5)),
    "group_norm": lambda x: jn.group_norm(x, _per_channel(1.5), _per_channel(0.5), num_groups=4),
    "group_norm_masked": lambda x: jn.group_norm(
        x, num_groups=2, where=jnp.arange(6)[None, :, None, None] < 4),
    "instance_norm": lambda x: jn.instance_norm(x, _per_channel(1.5), _per_channel(0.5)),
    "batch_norm": lambda x: jn.batch_norm(x, _per_channel(1.5), _per_channel(0.5), _STATS, training=True)[0],
    "batch_norm_inference": lambda x: jn.batch_norm(x, _per_channel(), _per_channel(0), _STATS, training=False)[0],
    "batch_renorm": lambda x: jn.batch_renorm(x, _per_channel(), _per_channel(0), _STATS, training=True)[0],
    "representative_batch_norm": lambda x: jn.representative_batch_norm(
        x, _per_channel(), _per_channel(0), _STATS, training=True, **_RBN)[0],
    "switchable_norm": lambda x: jn.switchable_norm(x, _per_channel(), _per_channel(0), _STATS, training=True)[0],
    "evonorm_b0": lambda x: jn.evonorm_b0(x, _per_channel(), _per_channel(0), _per_channel(), _STATS, training=True)[0],
    "evonorm_s0": lambda x: jn.evonorm_s0(x, _per_channel(), _per_channel(0), _per_channel(), num_groups=4),
    "filter_response_norm": lambda x: jn.filter_response_norm(x, _per_channel(), _per_channel(0), _per_channel(0)),
    "local_response_norm": lambda x: jn.local_response_norm(x, size=3),
    "weight_standardize": lambda x: jn.weight_standardize(x),
    "weight_norm": lambda x: jn.weight_norm(x, _per_channel(2.0)),
    "spectral_norm": lambda x: jn.spectral_norm(x, _per_channel(1 / np.sqrt(C)), n_iterations=3)[0],
}


def _variants(fn):
    """Forward, gradient, vmapped forward and checkpointed gradient of ``fn``."""
    loss = lambda x: jnp.sum(jnp.sin(fn(x)))
    return {
        "forward": fn,
        "grad": jax.grad(loss),
        "vmap": jax.vmap(lambda x: fn(x[None])[0]),
        "checkpoint_grad": jax.grad(jax.checkpoint(loss)),
    }


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_have_no_control_flow_on_accelerators(name):
    x = _x()
    for variant, fn in _variants(FUNCTIONS[name]).items():
        assert _control_flow(fn, x) == [], (name, variant)


def test_fold_batch_norm_has_no_control_flow_on_accelerators():
    kernel = _x(shape=(3, 3, 4, C))
    fold = lambda k: jn.fold_batch_norm(k, jnp.zeros((C,)), _STATS, _per_channel(), _per_channel(0))[0]
    assert _control_flow(fold, kernel) == []
    assert _control_flow(jax.grad(lambda k: jnp.sum(fold(k) ** 2)), kernel) == []


def _linen_modules():
    """(name, module, call kwargs) for every jaxnorm.linen module (training mode where it has one)."""
    train = dict(use_running_average=False)
    return [
        ("BatchNorm", jl.BatchNorm(**train), {}),
        ("BatchRenorm", jl.BatchRenorm(**train), {}),
        ("EvoNormB0", jl.EvoNormB0(**train), {}),
        ("RepresentativeBatchNorm", jl.RepresentativeBatchNorm(**train), {}),
        ("SwitchableNorm", jl.SwitchableNorm(**train), {}),
        ("LayerNorm", jl.LayerNorm(), {}),
        ("RMSNorm", jl.RMSNorm(), {}),
        ("GroupNorm", jl.GroupNorm(num_groups=4), {}),
        ("InstanceNorm", jl.InstanceNorm(), {}),
        ("EvoNormS0", jl.EvoNormS0(num_groups=4), {}),
        ("FilterResponseNorm", jl.FilterResponseNorm(), {}),
        ("LocalResponseNorm", jl.LocalResponseNorm(size=3), {}),
        ("StandardizedConv", jl.StandardizedConv(features=C, kernel_size=(3, 3)), {}),
        ("WeightNorm", jl.WeightNorm(nn.Dense(C)), {}),
        ("SpectralNorm", jl.SpectralNorm(nn.Dense(C), n_steps=2), {"update_stats": True}),
    ]


@pytest.mark.parametrize("name, module, kwargs", _linen_modules(), ids=[m[0] for m in _linen_modules()])
def test_linen_modules_have_no_control_flow_on_accelerators(name, module, kwargs):
    x = _x()
    variables = module.init(jax.random.key(0), x, **kwargs)
    params, rest = variables["params"] if "params" in variables else {}, {
        k: v for k, v in variables.items() if k != "params"}

    def apply(params, x):
        y, _ = module.apply({"params": params, **rest}, x, mutable=list(rest), **kwargs)
        return y

    loss = lambda params, x: jnp.sum(jnp.sin(apply(params, x)))
    assert _control_flow(apply, params, x) == [], name
    assert _control_flow(jax.grad(loss, argnums=(0, 1)), params, x) == [], name
    assert _control_flow(jax.vmap(lambda x: apply(params, x[None])[0]), x) == [], name


def _nnx_modules():
    rngs = lambda: nnx.Rngs(0)
    return [
        ("BatchNorm", lambda: jx.BatchNorm(C, rngs=rngs())),
        ("BatchRenorm", lambda: jx.BatchRenorm(C, rngs=rngs())),
        ("EvoNormB0", lambda: jx.EvoNormB0(C, rngs=rngs())),
        ("RepresentativeBatchNorm", lambda: jx.RepresentativeBatchNorm(C, rngs=rngs())),
        ("SwitchableNorm", lambda: jx.SwitchableNorm(C, rngs=rngs())),
        ("LayerNorm", lambda: jx.LayerNorm(C, rngs=rngs())),
        ("RMSNorm", lambda: jx.RMSNorm(C, rngs=rngs())),
        ("GroupNorm", lambda: jx.GroupNorm(C, num_groups=4, rngs=rngs())),
        ("InstanceNorm", lambda: jx.InstanceNorm(C, rngs=rngs())),
        ("EvoNormS0", lambda: jx.EvoNormS0(C, num_groups=4, rngs=rngs())),
        ("FilterResponseNorm", lambda: jx.FilterResponseNorm(C, rngs=rngs())),
        ("LocalResponseNorm", lambda: jx.LocalResponseNorm(size=3)),
        ("StandardizedConv", lambda: jx.StandardizedConv(C, C, kernel_size=(3, 3), rngs=rngs())),
        ("WeightNorm", lambda: jx.WeightNorm(nnx.Linear(C, C, rngs=rngs()), rngs=rngs())),
        ("SpectralNorm", lambda: jx.SpectralNorm(nnx.Linear(C, C, rngs=rngs()), n_steps=2, rngs=rngs())),
    ]


@pytest.mark.parametrize("name, make", _nnx_modules(), ids=[m[0] for m in _nnx_modules()])
def test_nnx_modules_have_no_control_flow_on_accelerators(name, make):
    x = _x()
    graphdef, state = nnx.split(make())

    def apply(state, x):
        module = nnx.merge(graphdef, state)
        return module(x), nnx.state(module)

    def loss(state, x):
        y, _ = apply(state, x)
        return jnp.sum(jnp.sin(y))

    assert _control_flow(apply, state, x) == [], name
    assert _control_flow(jax.grad(loss, argnums=(0, 1)), state, x) == [], name


# A multi-platform export runs each platform's program.
def test_multi_platform_export_dispatches_on_the_platform():
    """Two programs that differ in value (sin on the CPU, cos elsewhere): each export carries its own."""
    f = lambda x: lower_per_platform(x, cpu=jnp.sin, accelerator=jnp.cos)
    x = jnp.linspace(0.1, 1.0, 5)
    texts = {p: export.export(jax.jit(f), platforms=[p])(x).mlir_module() for p in ("cpu", "cuda", "tpu")}
    sine, cosine = "stablehlo.sine ", "stablehlo.cosine "
    assert sine in texts["cpu"] and cosine not in texts["cpu"]
    for p in ("cuda", "tpu"):
        assert cosine in texts[p] and sine not in texts[p] and "stablehlo.case" not in texts[p]
    multi = export.export(jax.jit(f), platforms=["cpu", "cuda", "tpu"])(x)
    assert sine in multi.mlir_module() and cosine in multi.mlir_module()
    np.testing.assert_array_equal(multi.call(x), jnp.sin(x))  # run here, on the CPU: the CPU program


MULTI = {
    "layer_norm": FUNCTIONS["layer_norm"],
    "group_norm": FUNCTIONS["group_norm"],
    "batch_norm": FUNCTIONS["batch_norm"],
    "layer_norm_grad": jax.grad(lambda x: jnp.sum(jnp.sin(FUNCTIONS["layer_norm"](x)))),
    "group_norm_grad": jax.grad(lambda x: jnp.sum(jnp.sin(FUNCTIONS["group_norm"](x)))),
}


@pytest.mark.parametrize("name", sorted(MULTI))
def test_multi_platform_export_of_jaxnorm_runs_on_the_cpu(name):
    """Exported for cpu, cuda and tpu, run here: the CPU program's values; the accelerators' part has no conditional."""
    x = _x(mean=0.3)
    exported = export.export(jax.jit(MULTI[name]), platforms=["cpu", "cuda", "tpu"])(x)
    assert "stablehlo.custom_call" not in exported.mlir_module()  # lowered to plain StableHLO
    np.testing.assert_allclose(exported.call(x), jax.jit(MULTI[name])(x), rtol=1e-6, atol=1e-6)
    cuda = export.export(jax.jit(MULTI[name]), platforms=["cuda"])(x).mlir_module()
    assert "stablehlo.case" not in cuda


def _reshaped_full_size(text, shape):
    """Tensor types in ``text`` with ``shape``'s element count but another shape (views of ``x``)."""
    size = int(np.prod(shape))
    found = set()
    for dims in re.findall(r"tensor<((?:\d+x)+)f32>", text):
        dims = tuple(int(d) for d in dims.rstrip("x").split("x"))
        if int(np.prod(dims)) == size and dims != tuple(shape):
            found.add(dims)
    return found


def test_single_platform_exports_carry_only_their_program():
    """Exported for the CPU: the data-dependent switch and the views are there; for cuda neither."""
    x = _x()
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(FUNCTIONS["group_norm"](x))))
    cpu_text = export.export(jax.jit(grad), platforms=["cpu"])(x).mlir_module()
    cuda_text = export.export(jax.jit(grad), platforms=["cuda"])(x).mlir_module()
    assert "stablehlo.case" in cpu_text
    assert "stablehlo.case" not in cuda_text
    # The CPU program's views reshape full-size operands; the GPU program keeps x's shape
    # (and GroupNorm's channels split into groups only on small statistics).
    assert _reshaped_full_size(cpu_text, x.shape)
    assert not _reshaped_full_size(cuda_text, x.shape)


# The primitive itself, on a toy pair of programs that agree in value.
def _toy(x):
    return lower_per_platform(
        x, cpu=lambda x: jnp.sum(x * x, -1, keepdims=True) * x, accelerator=lambda x: x * jnp.sum(x**2, -1, keepdims=True)
    )


def _toy_ref(x):
    return jnp.sum(x * x, -1, keepdims=True) * x


def test_primitive_under_every_transformation():
    x = 0.3 * _x(shape=(4, 5), mean=0.2)  # small values: sin(f(x)) stays well conditioned in float32
    loss = lambda f: (lambda x: jnp.sum(jnp.sin(f(x))))
    checks = {
        "eager": (_toy(x), _toy_ref(x)),
        "jit": (jax.jit(_toy)(x), _toy_ref(x)),
        "vmap": (jax.vmap(_toy)(x), jax.vmap(_toy_ref)(x)),
        "grad": (jax.jit(jax.grad(loss(_toy)))(x), jax.grad(loss(_toy_ref))(x)),
        "eager grad": (jax.grad(loss(_toy))(x), jax.grad(loss(_toy_ref))(x)),
        "jvp": (jax.jvp(_toy, (x,), (jnp.cos(x),))[1], jax.jvp(_toy_ref, (x,), (jnp.cos(x),))[1]),
        "hessian": (jax.jit(jax.hessian(loss(_toy)))(x), jax.hessian(loss(_toy_ref))(x)),
        "vmap grad": (jax.vmap(jax.grad(loss(_toy)))(x), jax.vmap(jax.grad(loss(_toy_ref)))(x)),
        "checkpoint grad": (jax.grad(jax.checkpoint(loss(_toy)))(x), jax.grad(loss(_toy_ref))(x)),
        "scan": (
            jax.lax.scan(lambda c, r: (c, _toy(r)), 0.0, x)[1],
            jax.lax.scan(lambda c, r: (c, _toy_ref(r)), 0.0, x)[1],
        ),
    }
    for name, (got, want) in checks.items():
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=name)
    check_grads(_toy, (x,), order=2, modes=("fwd", "rev"), atol=5e-2, rtol=5e-2)


def test_constant_inputs_inside_jit_still_lower_per_platform():
    """Inside jit with only constants for arguments, the choice still waits for the lowering
    (eager evaluation alone picks by where the data lives)."""
    c = np.asarray(_x(mean=5.0, shape=(4, C)))
    fn = lambda: jn.group_norm(c, num_groups=2)  # noqa: E731
    cuda = export.export(jax.jit(fn), platforms=["cuda"])().mlir_module()
    cpu = export.export(jax.jit(fn), platforms=["cpu"])().mlir_module()
    assert "stablehlo.case" not in cuda and "stablehlo.case" in cpu


def test_first_import_inside_a_jit_trace():
    """jaxnorm imported for the first time while jit traces: its eager check still tells a
    traced call from an eager one (it read the importing thread's jit trace as "eager", and
    every call under jit then asked a tracer for its devices)."""
    code = (
        "import jax, numpy as np\n"
        "f = lambda x: __import__('jaxnorm').batch_norm(\n"
        "    x, None, None, __import__('jaxnorm').BatchStats.init(4), training=True)[0]\n"
        "x = np.arange(24, dtype=np.float32).reshape(6, 4)\n"
        "y = jax.jit(f)(x)\n"
        "print(y.shape, bool(abs(float(y.mean())) < 1e-5), bool(abs(float(y.std()) - 1) < 1e-3))\n"
        "print(jax.jit(jax.grad(lambda x: (f(x) ** 3).sum()))(x).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["(6, 4) True True", "(6, 4)"]


def test_env_var_runs_the_accelerator_program_on_the_cpu():
    code = (
        "import jax, jax.numpy as jnp\n"
        "from jaxnorm._lowering.per_platform import lower_per_platform\n"
        "f = lambda x: lower_per_platform(x, cpu=jnp.sin, accelerator=jnp.cos)\n"
        "x = jnp.arange(3.0)\n"
        "print(bool(jnp.all(jax.jit(f)(x) == jnp.cos(x))), bool(jnp.all(f(x) == jnp.cos(x))), "
        "'jaxnorm_per_platform' in str(jax.make_jaxpr(f)(x)))\n"
    )
    env = dict(os.environ, **{ENV_VAR: "accelerator"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]
    env[ENV_VAR] = ""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_env_var_with_an_unknown_value_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="JAXNORM_CPU_LOWERING='gpu'.*'accelerator'"):
        jax.jit(jn.layer_norm)(_x())
