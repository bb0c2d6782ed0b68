"""The Triton kernels (jaxnorm_kernels), run by Triton's interpreter on PyTorch CPU tensors, against XLA.

Each case runs the kernels' forward and backward on a PyTorch CPU tensor and
compares ``y``, ``dx``, ``dscale`` and ``dbias`` with jaxnorm's XLA path
(``group_norm``/``instance_norm``/``layer_norm``/``rms_norm`` and their
``jax.vjp``) on the same values, by relative L2 error: float32 rounding for
float32 inputs, one rounding of the output type for bfloat16/float16.

The cases cover the kernels' own plans: group sizes 1000 and 4097, channel
counts that are not powers of two, NHWC and NCHW, large-mean rows (mean
1e4, std 1), the split path (several programs per group, partial sums),
several rows per backward program, tiny tiles (so every loop runs several
times and every mask edge is hit), the fused SiLU, and missing scale/bias.
Small shapes with the default plan (group sizes 1 and 3, half precision,
large means) go through the JAX binding in the operation contract
(``tests/operation_contract.py``, implementation ``triton``), held to the
same tests as XLA.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("kernels run on the GPU here; the interpreter tests need TRITON_INTERPRET=1",
                allow_module_level=True)

from jaxnorm_kernels import torch_ops  # noqa: E402
from jaxnorm_kernels.plan import layout_of, plan  # noqa: E402

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative L2 error allowed: float32 arithmetic, or one rounding of the output type.
TOL = {"float32": 2e-6, "bfloat16": 1e-2, "float16": 2e-3}


def case(name, shape, groups, *, axis=-1, kind="group", loc=0.0, dtype="float32", silu=False, affine=True,
         **plan_kw):
    return pytest.param(dict(shape=shape, groups=groups, axis=axis, kind=kind, loc=loc, dtype=dtype, silu=silu,
                             affine=affine, plan_kw=plan_kw), id=name)


# Default plans on small shapes run through the JAX binding in the operation contract
# (tests/operation_contract.py, implementation "triton"); these are the kernels' own
# plans: splits, tiles, several rows per program, large groups, the fused SiLU.
CASES = [
    case("group-size-1000-c20", (2, 10, 10, 20), 2),
    case("group-size-1000-c20-nchw-split", (2, 20, 10, 10), 2, axis=1, split=3, tile_elements=64),
    case("group-size-4097-nhwc", (2, 4097, 3), 3, tile_elements=1024),
    case("group-size-4097-nchw-split", (1, 3, 4097), 3, axis=1, split=5, tile_elements=512),
    case("layer-norm-1000", (5, 1000), 1, kind="layer"),
    case("layer-norm-4097-rows2", (5, 4097), 1, kind="layer", rows=2),
    case("rms-norm-4097", (3, 4097), 1, kind="rms"),
    case("rms-norm-tiles", (6, 50), 1, kind="rms", tile_elements=16),
    case("tiny-tiles-nhwc", (3, 3, 3, 12), 4, tile_elements=4, rows=2),
    case("tiny-tiles-nchw-split", (2, 12, 5, 5), 4, axis=1, split=4, tile_elements=8),
    case("large-mean-gn-split", (2, 6, 8, 8), 3, axis=1, loc=1e4, split=4, tile_elements=32),
    case("large-mean-layer", (4, 999), 1, kind="layer", loc=1e4),
    case("large-mean-rms", (4, 999), 1, kind="rms", loc=1e4),
    case("bf16-layer-tiles", (6, 40), 1, kind="layer", dtype="bfloat16", tile_elements=16),
    case("f16-rms", (4, 300), 1, kind="rms", dtype="float16"),
    case("silu-gn", (2, 4, 4, 6), 3, silu=True),
    case("silu-gn-split-bf16", (2, 6, 8, 8), 2, axis=1, silu=True, dtype="bfloat16", split=2, tile_elements=32),
    case("no-affine-instance-split", (2, 16, 3), 3, kind="instance", affine=False, split=2, tile_elements=4),
]


def xla_norm(c, x, scale, bias):
    """jaxnorm's XLA path for the case (float32 or the input's half type)."""
    kw = {"epsilon": 1e-5, "implementation": "xla"}
    if c["kind"] == "layer":
        y = jn.layer_norm(x, scale, bias, **kw)
    elif c["kind"] == "rms":
        y = jn.rms_norm(x, scale, **kw)
    elif c["kind"] == "instance":
        y = jn.instance_norm(x, scale, bias, channel_axis=c["axis"], epsilon=1e-5)
    else:
        y = jn.group_norm(x, scale, bias, num_groups=c["groups"], channel_axis=c["axis"], **kw)
    return jax.nn.silu(y) if c["silu"] else y


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def draw(c, seed):
    rng = np.random.default_rng(seed)
    shape, channels = c["shape"], c["shape"][c["axis"]]
    x = c["loc"] + rng.standard_normal(shape) * rng.uniform(0.5, 2.0)
    x = x.astype(np.float32)
    if c["dtype"] != "float32":  # the same half-precision values on both sides
        x = np.asarray(jnp.asarray(x, c["dtype"]).astype(jnp.float32))
    scale = (rng.choice([-1.0, 1.0], channels) * rng.uniform(0.5, 1.5, channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, scale, bias, dy


@pytest.mark.parametrize("c", CASES)
def test_kernels_match_xla(c):
    x, scale, bias, dy = draw(c, seed=len(c["shape"]) * 7 + c["groups"])
    dtype = c["dtype"]
    has_bias = c["affine"] and c["kind"] != "rms"
    s_np = scale if c["affine"] else None
    b_np = bias if has_bias else None

    def tensor(a, half=True):
        return None if a is None else torch.from_numpy(np.array(a)).to(TORCH_DTYPES[dtype] if half else torch.float32)

    xt, dyt = tensor(x), tensor(dy)
    kw = dict(num_groups=c["groups"], channel_axis=c["axis"], center=c["kind"] != "rms", silu=c["silu"])
    y, m, r = torch_ops.group_norm_forward(xt, tensor(s_np, False), tensor(b_np, False), epsilon=1e-5, **kw,
                                           **c["plan_kw"])
    dx, dscale, dbias = torch_ops.group_norm_backward(dyt, xt, tensor(s_np, False), tensor(b_np, False), m, r,
                                                      **kw, **c["plan_kw"])
    assert y.dtype == xt.dtype and dx.dtype == xt.dtype

    xj = jnp.asarray(x, dtype)
    args = [xj] + [jnp.asarray(a) for a in (s_np, b_np) if a is not None]
    def f(x, *params):
        if c["kind"] == "rms":
            return xla_norm(c, x, params[0] if params else None, None)
        return xla_norm(c, x, *(params if params else (None, None)))
    y_want, vjp = jax.vjp(f, *args)
    grads = vjp(jnp.asarray(dy, dtype))
    tol = TOL[dtype]
    assert rel_l2(y.float().numpy(), y_want.astype(jnp.float32)) < tol
    assert rel_l2(dx.float().numpy(), grads[0].astype(jnp.float32)) < tol * (10 if dtype == "float32" else 1)
    if s_np is not None:
        assert dscale.dtype == torch.float32 and rel_l2(dscale.numpy(), grads[1]) < tol * 10
    if b_np is not None:
        assert rel_l2(dbias.numpy(), grads[2]) < tol * 10


@pytest.mark.parametrize("shape,groups,axis", [((2, 4, 4, 6), 3, -1), ((2, 6, 4, 4), 3, 1)])
def test_statistics_against_numpy_float64(shape, groups, axis):
    """The stored statistics: K + m is the group mean and r = 1/sqrt(var + ε), at mean 1e4."""
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    _, m, r = torch_ops.group_norm_forward(torch.from_numpy(x), num_groups=groups, channel_axis=axis, epsilon=1e-5)
    xc = np.moveaxis(x.astype(np.float64), axis, -1)
    n, c = xc.shape[0], xc.shape[-1]
    grouped = xc.reshape(n, -1, groups, c // groups).transpose(0, 2, 1, 3).reshape(n, groups, -1)
    first = grouped[:, :, 0]  # the shift K: each group's first element
    np.testing.assert_allclose(first + m.numpy(), grouped.mean(-1), rtol=0, atol=2e-4)  # fp32 rounding at 1e4
    np.testing.assert_allclose(m.numpy(), grouped.mean(-1) - first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.numpy(), 1 / np.sqrt(grouped.var(-1) + 1e-5), rtol=1e-5)


def test_every_output_element_is_written():
    """Outputs are allocated uninitialized: a poisoned first run must be fully overwritten."""
    x = torch.randn(2, 20, 7, 3)
    y1, m, r = torch_ops.group_norm_forward(x, num_groups=4, channel_axis=1, split=3, tile_elements=16)
    assert torch.isfinite(y1).all()
    y2, _, _ = torch_ops.group_norm_forward(x, num_groups=4, channel_axis=1)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,groups,axis", [((2, 64, 64, 320), 32, -1), ((16, 1280, 8, 8), 32, 1),
                                               ((32768, 4096), 1, -1), ((1, 512, 512, 128), 32, -1)])
def test_plan_fills_the_gpu_and_covers_every_position(shape, groups, axis):
    layout = layout_of(shape, num_groups=groups, channel_axis=axis)
    p = plan(layout)
    rows = layout.n * layout.g
    assert p.split * rows >= 512 or p.split * p.s_chunk >= layout.s and p.s_chunk == p.block_s
    assert (p.split - 1) * p.s_chunk < layout.s <= p.split * p.s_chunk  # no empty program, nothing left out
    assert p.block_s * p.block_c <= 8192 and p.s_chunk % p.block_s == 0
    assert 1 <= p.rows <= layout.n and (p.split == 1 or p.rows == 1)


def test_kernels_never_import_jaxnorm_or_flax():
    """The layering rule: kernels know nothing of jaxnorm or Flax (torch only in the CPU test harness)."""
    import ast
    import pathlib

    import jaxnorm_kernels

    folder = pathlib.Path(jaxnorm_kernels.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in {"__future__", "dataclasses", "functools", "math", "os", "triton", "jax",
                               "jax_triton", "numpy", "torch", "jaxnorm_kernels"}, (path.name, name)
                assert top != "torch" or path.name in ("torch_ops.py", "jax_ops.py"), (path.name, name)
