"""GPU-only checks, run by ``benchmarks/gpu_check.py`` on an H100/H200 (skipped without a GPU).

* The XLA path on the GPU against float64 references computed on the GPU,
  forward and gradients, on Gaussian, uniform, post-ReLU, bimodal and
  Student-t (3 degrees of freedom) data with unit spread at means 0, 1e4
  and 1e6: relative L2 error at most 1e-6 (outputs) and 1e-6 (gradients).
* The compiled GPU programs (forward, gradient, vmap of the gradient) hold
  no ``conditional`` or ``while``: on XLA:GPU each is a host round-trip.
* ``implementation=None`` runs the XLA path on a GPU (the Triton kernels are
  opt-in until they have passed this check).
* The Triton kernels through jax_triton (``implementation="triton"``)
  against the XLA path at the anchor shapes (bf16) and against float64 at
  large means (float32), and the same kernels on PyTorch CUDA tensors
  (no jax_triton needed) against the XLA path.

``JAXNORM_GPU_TESTS_ON_CPU=1`` runs the numerics tests on the CPU (to check
the tests themselves); the others need a real GPU.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

REAL_GPU = jax.default_backend() == "gpu"
ON_GPU = REAL_GPU or os.environ.get("JAXNORM_GPU_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not ON_GPU, reason="needs a GPU (benchmarks/gpu_check.py runs these there)")]
needs_real_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs a real GPU")

OUTPUT_TOL = 1e-6  # README: float32 output within 1e-6 (relative L2) of float64 at means up to 1e6
GRAD_TOL = 1e-6  # issue 21: the same target for the gradients (measured on the CPU: at most 3e-7)
MEANS = (0.0, 1e4, 1e6)


def _draw(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    """Unit-spread samples of one distribution (before the mean is added)."""
    if kind == "gaussian":
        return rng.standard_normal(shape)
    if kind == "uniform":
        return rng.uniform(-np.sqrt(3), np.sqrt(3), shape)
    if kind == "relu":
        return np.maximum(rng.standard_normal(shape), 0.0)
    if kind == "bimodal":
        return rng.choice([-1.0, 1.0], shape) + 0.1 * rng.standard_normal(shape)
    if kind == "student_t3":
        return rng.standard_t(3, shape)
    raise ValueError(kind)


DISTRIBUTIONS = ("gaussian", "uniform", "relu", "bimodal", "student_t3")


def _grouped(x, groups: int, channel_axis: int):
    """(view of x with the channel axis split into (groups, C/groups), reduced axes, channel axis of the view)."""
    axis = channel_axis % x.ndim
    c = x.shape[axis]
    view = x.reshape(x.shape[:axis] + (groups, c // groups) + x.shape[axis + 1:])
    axes = tuple(a for a in range(1, view.ndim) if a != axis)
    return view, axes


def _affine(y, scale, bias, channel_axis):
    shape = [1] * y.ndim
    shape[channel_axis % y.ndim] = -1
    y = y * scale.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _standardize(x, axes, eps, *, rms=False):
    if rms:
        return x / jnp.sqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)
    m = jnp.mean(x, axis=axes, keepdims=True)
    d = x - m
    return d / jnp.sqrt(jnp.mean(d * d, axis=axes, keepdims=True) + eps)


def _ref_group(groups, channel_axis, eps):
    def ref(x, scale, bias):
        view, axes = _grouped(x, groups, channel_axis)
        return _affine(_standardize(view, axes, eps).reshape(x.shape), scale, bias, channel_axis)
    return ref


def _ref_axes(axes, channel_axis, eps, rms=False):
    def ref(x, scale, bias):
        return _affine(_standardize(x, axes, eps, rms=rms), scale, bias, channel_axis)
    return ref


# name -> (apply(x, scale, bias) with jaxnorm, float64 reference, x shape, channel axis, has bias)
SCHEMES = {
    "layer_norm": (lambda x, s, b, impl="xla": jn.layer_norm(x, s, b, epsilon=1e-5, implementation=impl),
                   _ref_axes((-1,), -1, 1e-5), (64, 1024), -1, True),
    "rms_norm": (lambda x, s, b, impl="xla": jn.rms_norm(x, s, epsilon=1e-6, implementation=impl),
                 _ref_axes((-1,), -1, 1e-6, rms=True), (64, 1024), -1, False),
    "group_norm_nhwc": (lambda x, s, b, impl="xla": jn.group_norm(x, s, b, num_groups=8, epsilon=1e-5,
                                                                  implementation=impl),
                        _ref_group(8, -1, 1e-5), (4, 16, 16, 64), -1, True),
    "group_norm_nchw": (lambda x, s, b, impl="xla": jn.group_norm(x, s, b, num_groups=8, channel_axis=1,
                                                                  epsilon=1e-5, implementation=impl),
                        _ref_group(8, 1, 1e-5), (4, 64, 16, 16), 1, True),
    "instance_norm": (lambda x, s, b, impl="xla": jn.instance_norm(x, s, b, epsilon=1e-5),
                      _ref_axes((1, 2), -1, 1e-5), (4, 16, 16, 32), -1, True),
    "batch_norm": (lambda x, s, b, impl="xla": jn.batch_norm(x, s, b, jn.BatchStats.init(x.shape[-1]),
                                                              training=True, epsilon=1e-5)[0],
                   _ref_axes((0, 1, 2), -1, 1e-5), (16, 8, 8, 32), -1, True),
}
TRITON_SCHEMES = ("layer_norm", "rms_norm", "group_norm_nhwc", "group_norm_nchw")


def rel_l2(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def _inputs(name, seed):
    _, _, shape, channel_axis, has_bias = SCHEMES[name]
    rng = np.random.default_rng(seed)
    c = shape[channel_axis]
    scale = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    bias = (0.5 * rng.standard_normal(c)).astype(np.float32) if has_bias else None
    w = rng.standard_normal(shape).astype(np.float32)
    return rng, shape, scale, bias, w


def _compare(name, impl="xla", *, means=MEANS, distributions=DISTRIBUTIONS, grads=True):
    """Every (distribution, mean): (label, output error, max gradient error)."""
    apply, ref, _, _, has_bias = SCHEMES[name]
    rng, shape, scale, bias, w = _inputs(name, seed=sum(map(ord, name)))
    f32 = jax.jit(lambda x, s, b: apply(x, s, b, impl))
    f64 = jax.jit(ref)

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b) * w.astype(x.dtype))

    argnums = (0, 1, 2) if has_bias else (0, 1)
    g32 = jax.jit(jax.grad(loss(lambda x, s, b: apply(x, s, b, impl)), argnums=argnums))
    g64 = jax.jit(jax.grad(loss(ref), argnums=argnums))
    s64 = scale.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    results = []
    for kind in distributions:
        d = _draw(kind, shape, rng)
        for mean in means:
            x = (mean + d).astype(np.float32)
            x64 = x.astype(np.float64)  # the same float32 values, in float64
            y = f32(x, scale, bias)
            assert y.dtype == jnp.float32
            err = rel_l2(y, f64(x64, s64, b64))
            gerr = None
            if grads:
                gerr = max(rel_l2(a, b_) for a, b_ in zip(g32(x, scale, bias), g64(x64, s64, b64)))
            results.append((f"{kind} mean {mean:g}", err, gerr))
    return results


def _failures(results, out_tol=OUTPUT_TOL, grad_tol=GRAD_TOL):
    bad = [f"{label}: output {e:.1e}" + (f", gradients {g:.1e}" if g is not None else "")
           for label, e, g in results
           if not (e <= out_tol) or (g is not None and not (g <= grad_tol))]
    return bad


@pytest.mark.parametrize("name", list(SCHEMES))
def test_xla_path_matches_float64_at_large_means(name):
    """Outputs within 1e-6 and gradients within GRAD_TOL of float64, five distributions, means 0 to 1e6."""
    results = _compare(name)
    bad = _failures(results)
    assert not bad, f"{name}: " + "; ".join(bad)


def _count_control_flow(hlo_text: str) -> dict:
    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.count_hlo_ops(hlo_text)
    return {k: counts[k] for k in ("conditional", "while", "host_callbacks")}


@needs_real_gpu
@pytest.mark.parametrize("name", list(SCHEMES))
def test_compiled_gpu_programs_hold_no_control_flow(name):
    """Forward, gradient and vmap of the gradient: no conditional, while or host callback on the GPU."""
    apply, _, shape, channel_axis, has_bias = SCHEMES[name]
    _, shape, scale, bias, w = _inputs(name, seed=0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)

    def loss(x, s, b):
        return jnp.sum(apply(x, s, b) * w)

    programs = {
        "forward": (jax.jit(lambda x, s, b: apply(x, s, b)), (x, scale, bias)),
        "gradient": (jax.jit(jax.grad(loss, argnums=(0, 1))), (x, scale, bias)),
        "vmap of gradient": (jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None, None))),
                             (jnp.stack([x, x + 1]), scale, bias)),
    }
    found = {}
    for label, (fn, args) in programs.items():
        counts = _count_control_flow(fn.lower(*args).compile().as_text())
        if any(counts.values()):
            found[label] = counts
    assert not found, f"{name}: control flow in the compiled GPU programs: {found}"


@needs_real_gpu
def test_implementation_none_runs_the_xla_path_on_a_gpu():
    """DESIGN.md: None means "xla" until the kernels have passed the GPU check on a real GPU.

    When the kernels have passed it and the default changes, change this test with it.
    """
    x = jnp.ones((2, 8, 8, 64), jnp.float32)
    t = jnp.ones((64, 256), jnp.float32)
    for fn, arg in [(lambda x: jn.group_norm(x, num_groups=8), x), (lambda t: jn.layer_norm(t), t),
                    (lambda t: jn.rms_norm(t), t)]:
        jaxpr = str(jax.make_jaxpr(fn)(arg))
        assert "triton" not in jaxpr and "callback" not in jaxpr, jaxpr[:2000]


# ------------------------------------------------------------------ Triton kernels


def _launcher():
    try:
        from jaxnorm._lowering.triton_dispatch import kernels
    except ImportError:
        return None
    ops = kernels()
    return None if ops is None else ops.launcher_available()


needs_jax_triton = pytest.mark.skipif(not REAL_GPU or _launcher() != "gpu",
                                      reason="needs a GPU with jax_triton and jaxnorm_kernels")

ANCHORS = {
    "group_norm 2x64x64x320": (lambda x, s, b, impl: jn.group_norm(x, s, b, num_groups=32, epsilon=1e-5,
                                                                   implementation=impl), (2, 64, 64, 320), True),
    "group_norm 2x32x32x640": (lambda x, s, b, impl: jn.group_norm(x, s, b, num_groups=32, epsilon=1e-5,
                                                                   implementation=impl), (2, 32, 32, 640), True),
    "group_norm 2x16x16x1280": (lambda x, s, b, impl: jn.group_norm(x, s, b, num_groups=32, epsilon=1e-5,
                                                                    implementation=impl), (2, 16, 16, 1280), True),
    "group_norm 2x8x8x1280": (lambda x, s, b, impl: jn.group_norm(x, s, b, num_groups=32, epsilon=1e-5,
                                                                  implementation=impl), (2, 8, 8, 1280), True),
    "layer_norm 8192x4096": (lambda x, s, b, impl: jn.layer_norm(x, s, b, epsilon=1e-5, implementation=impl),
                             (8192, 4096), True),
    "layer_norm 4096x8192": (lambda x, s, b, impl: jn.layer_norm(x, s, b, epsilon=1e-5, implementation=impl),
                             (4096, 8192), True),
    "rms_norm 8192x4096": (lambda x, s, b, impl: jn.rms_norm(x, s, epsilon=1e-6, implementation=impl),
                           (8192, 4096), False),
    "rms_norm 4096x8192": (lambda x, s, b, impl: jn.rms_norm(x, s, epsilon=1e-6, implementation=impl),
                           (4096, 8192), False),
}


@needs_jax_triton
@pytest.mark.parametrize("name", list(ANCHORS))
def test_triton_matches_xla_at_the_anchor_shapes_in_bfloat16(name):
    """bf16 in and out: output and gradients within one bf16 rounding (1e-2 relative L2) of the XLA path."""
    apply, shape, has_bias = ANCHORS[name]
    key = jax.random.split(jax.random.key(sum(map(ord, name))), 4)
    x = (jax.random.normal(key[0], shape, jnp.float32) + 2.0).astype(jnp.bfloat16)
    w = jax.random.normal(key[1], shape, jnp.float32).astype(jnp.bfloat16)
    c = shape[-1]
    scale = 1 + 0.1 * jax.random.normal(key[2], (c,), jnp.float32)
    bias = 0.1 * jax.random.normal(key[3], (c,), jnp.float32) if has_bias else None

    def run(impl):
        def f(x, s, b):
            y, pull = jax.vjp(lambda x, s: apply(x, s, b, impl), x, s)
            return (y, *pull(w))
        return jax.jit(f)(x, scale, bias)

    got, want = run("triton"), run("xla")
    assert got[0].dtype == jnp.bfloat16
    errors = {k: rel_l2(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
              for k, a, b in zip(("y", "dx", "dscale"), got, want)}
    assert all(np.isfinite(np.asarray(a.astype(jnp.float32))).all() for a in got)
    assert max(errors.values()) <= 1e-2, errors


@needs_jax_triton
@pytest.mark.parametrize("name", TRITON_SCHEMES)
def test_triton_matches_float64_at_large_means(name):
    """float32 through the kernels: outputs within 1e-6 and gradients within GRAD_TOL of float64 up to mean 1e6."""
    bad = _failures(_compare(name, "triton"))
    assert not bad, f"{name} (triton): " + "; ".join(bad)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


# (name, shape, groups, channel axis, kind, mean)
TORCH_CASES = [
    ("gn-nhwc-anchor", (2, 64, 64, 320), 32, -1, "group", 0.0),
    ("gn-nchw", (2, 320, 32, 32), 32, 1, "group", 0.0),
    ("gn-nhwc-mean-1e4", (2, 16, 16, 1280), 32, -1, "group", 1e4),
    ("gn-small-batch-split", (1, 8, 8, 1280), 32, -1, "group", 0.0),
    ("layer-4096", (256, 4096), 1, -1, "layer", 0.0),
    ("layer-mean-1e4", (64, 8192), 1, -1, "layer", 1e4),
    ("rms-8192", (64, 8192), 1, -1, "rms", 0.0),
]


@pytest.mark.skipif(not REAL_GPU or _torch_cuda() is None, reason="needs a GPU and PyTorch with CUDA")
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_kernels_on_torch_cuda_tensors_match_xla(case):
    """The Triton kernels compiled for this GPU, launched from PyTorch (no jax_triton), against the XLA path."""
    torch = _torch_cuda()
    from jaxnorm_kernels import torch_ops

    name, shape, groups, axis, kind, mean = case
    rng = np.random.default_rng(len(name))
    x = (mean + rng.standard_normal(shape)).astype(np.float32)
    c = shape[axis]
    scale = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    bias = (0.5 * rng.standard_normal(c)).astype(np.float32) if kind != "rms" else None
    dy = rng.standard_normal(shape).astype(np.float32)

    def xla(x, s, b):
        if kind == "layer":
            return jn.layer_norm(x, s, b, epsilon=1e-5, implementation="xla")
        if kind == "rms":
            return jn.rms_norm(x, s, epsilon=1e-5, implementation="xla")
        return jn.group_norm(x, s, b, num_groups=groups, channel_axis=axis, epsilon=1e-5, implementation="xla")

    y_ref, pull = jax.vjp(lambda x, s: xla(x, s, bias), x, scale)
    dx_ref, ds_ref = pull(dy)

    def t(a):
        return None if a is None else torch.from_numpy(np.array(a)).cuda()

    kw = dict(num_groups=groups, channel_axis=axis, center=kind != "rms")
    y, m, r = torch_ops.group_norm_forward(t(x), t(scale), t(bias), epsilon=1e-5, **kw)
    dx, ds, _ = torch_ops.group_norm_backward(t(dy), t(x), t(scale), t(bias), m, r, **kw)
    torch.cuda.synchronize()
    errors = {"y": rel_l2(y.cpu().numpy(), y_ref), "dx": rel_l2(dx.cpu().numpy(), dx_ref),
              "dscale": rel_l2(ds.cpu().numpy(), ds_ref)}
    assert max(errors.values()) <= 2e-5, errors
