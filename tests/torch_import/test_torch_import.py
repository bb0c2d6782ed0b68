"""jaxnorm.torch_import: PyTorch layers and parametrizations imported into jaxnorm.

Every supported layer is given random parameters and trained a few steps in
PyTorch (so its running statistics are far from their initial values), then
imported; the jaxnorm.linen module must reproduce torch's output in eval and
in train mode, and (BatchNorm) the updated running statistics, in float64 to
1e-10, with PyTorch's NCHW inputs (layout="torch") and channels-last inputs
(layout="flax"). Weight/spectral parametrizations are checked through the
core functions, against torch's weight in the converted layout, and end to
end through a Flax-layout dense layer and convolution.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from jaxnorm import linen
import jaxnorm as jn
from jaxnorm.torch_import import (
    FromTorch,
    from_torch,
    spectral_norm_from_torch,
    weight_norm_from_torch,
)

TOL = {"rtol": 1e-10, "atol": 1e-10}
F64 = torch.float64
_wn = jax.jit(jn.weight_norm, static_argnames=("feature_axis",))
_sn = jax.jit(jn.spectral_norm, static_argnames=("n_iterations", "epsilon", "feature_axis"))


# ----------------------------------------------------------------- helpers


def _randomize(m, seed):
    """Non-trivial parameters, then a few training steps so running stats move."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_((1.0 if name.endswith("bias") else 1.5) * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if name.endswith("weight"):
                p.add_(torch.sign(p))  # away from zero
    return g


def _data(g, shape, scale=3.0, shift=2.0):
    return scale * torch.randn(shape, generator=g, dtype=F64) + shift


def _to_layout(a, layout, trailing):
    """PyTorch-layout array -> the layout the imported module expects."""
    a = np.asarray(a)
    if layout == "torch" or trailing or a.ndim <= 2:
        return a
    return np.moveaxis(a, 1, -1)


def _from_layout(a, layout, trailing):
    a = np.asarray(a)
    if layout == "torch" or trailing or a.ndim <= 2:
        return a
    return np.moveaxis(a, -1, 1)


# name -> (constructor, input shape, trailing-axes layer?, layouts it imports with)
BOTH = ("flax", "torch")
CASES = {
    "bn1d_NC": (lambda: nn.BatchNorm1d(5, dtype=F64), (8, 5), False, BOTH),
    "bn1d_NCL": (lambda: nn.BatchNorm1d(4, momentum=0.25, dtype=F64), (6, 4, 7), False, BOTH),
    "bn2d": (lambda: nn.BatchNorm2d(3, eps=1e-3, momentum=0.3, dtype=F64), (4, 3, 5, 6), False, BOTH),
    "bn2d_no_affine": (lambda: nn.BatchNorm2d(3, affine=False, dtype=F64), (4, 3, 5, 6), False, BOTH),
    "bn3d": (lambda: nn.BatchNorm3d(2, dtype=F64), (3, 2, 3, 4, 5), False, BOTH),
    "bn2d_no_running": (
        lambda: nn.BatchNorm2d(3, track_running_stats=False, dtype=F64), (4, 3, 5, 6), False, BOTH,
    ),
    "gn": (lambda: nn.GroupNorm(2, 6, eps=1e-4, dtype=F64), (3, 6, 4, 5), False, ("flax",)),
    "gn_no_affine_1d": (lambda: nn.GroupNorm(3, 6, affine=False, dtype=F64), (3, 6, 7), False, ("flax",)),
    "in1d_affine": (lambda: nn.InstanceNorm1d(4, affine=True, dtype=F64), (3, 4, 9), False, BOTH),
    "in2d": (lambda: nn.InstanceNorm2d(4, eps=1e-3, dtype=F64), (3, 4, 5, 6), False, BOTH),
    "in3d_affine": (lambda: nn.InstanceNorm3d(2, affine=True, dtype=F64), (2, 2, 3, 4, 5), False, BOTH),
    "ln": (lambda: nn.LayerNorm(7, eps=1e-4, dtype=F64), (3, 5, 7), True, BOTH),
    "ln_no_affine": (lambda: nn.LayerNorm(7, elementwise_affine=False, dtype=F64), (3, 5, 7), True, BOTH),
    "ln_2axes_no_bias": (lambda: nn.LayerNorm((5, 7), bias=False, dtype=F64), (3, 4, 5, 7), True, ("torch",)),
    "rms": (lambda: nn.RMSNorm(7, eps=1e-5, dtype=F64), (3, 5, 7), True, BOTH),
    "rms_eps_none_2axes": (lambda: nn.RMSNorm((5, 7), dtype=F64), (3, 4, 5, 7), True, ("torch",)),
    "rms_no_affine": (lambda: nn.RMSNorm(7, eps=1e-3, elementwise_affine=False), (3, 5, 7), True, BOTH),
    "lrn": (lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.7, k=2.0), (2, 6, 4, 5), False, BOTH),
}
PARAMS = [(name, layout) for name, case in CASES.items() for layout in case[3]]


def _is_batch_norm(m):
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _prepared(name, seed=0):
    make, shape, trailing, _ = CASES[name]
    m = make()
    g = _randomize(m, seed)
    m.train()
    for _ in range(3):  # move the running statistics away from (0, 1)
        m(_data(g, shape))
    return m, g, shape, trailing


def _apply(module, variables, x, training):
    """jaxnorm output (and the batch_stats after the call, for BatchNorm)."""
    if isinstance(module, linen.BatchNorm):
        if module.use_running_average is None:
            if not training:
                return module.apply(variables, x, use_running_average=True), variables["batch_stats"]
            y, upd = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        else:
            y, upd = module.apply(variables, x, mutable=["batch_stats"])
        return y, upd["batch_stats"]
    return module.apply(variables, x), None


# ------------------------------------------------------ normalization layers


@pytest.mark.parametrize("name, layout", PARAMS)
def test_layer_matches_torch_in_eval_and_train(name, layout):
    m, g, shape, trailing = _prepared(name)
    module, variables = from_torch(m, layout=layout)
    x = _data(g, shape)
    xj = jnp.asarray(_to_layout(x.numpy(), layout, trailing))
    if _is_batch_norm(m) and m.track_running_stats:
        stats = variables["batch_stats"]
        np.testing.assert_array_equal(stats["mean"], m.running_mean.numpy())
        assert not np.allclose(stats["mean"], 0, atol=0.1)  # the stats did move in torch
    # both modes in one compilation
    (got_eval, _), (got_train, new_stats) = jax.jit(
        lambda v, x: (_apply(module, v, x, False), _apply(module, v, x, True))
    )(variables, xj)
    assert got_eval.dtype == got_train.dtype == jnp.float64

    # eval mode: running statistics (BatchNorm), or the same computation
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    np.testing.assert_allclose(_from_layout(got_eval, layout, trailing), want, **TOL)

    # train mode: batch statistics, and one update of the running ones
    m.train()
    with torch.no_grad():
        want = m(x).numpy()
    np.testing.assert_allclose(_from_layout(got_train, layout, trailing), want, **TOL)
    if _is_batch_norm(m) and m.track_running_stats:
        np.testing.assert_allclose(new_stats["mean"], m.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(new_stats["var"], m.running_var.numpy(), **TOL)
        assert not np.allclose(new_stats["var"], variables["batch_stats"]["var"], rtol=1e-3)


@pytest.mark.parametrize("name, layout", PARAMS)
def test_variables_have_the_structure_init_gives(name, layout):
    m, _, shape, trailing = _prepared(name)
    result = from_torch(m, layout=layout)
    x = jnp.zeros(_to_layout(np.zeros(shape), layout, trailing).shape)
    kw = {"use_running_average": True} if getattr(result.module, "use_running_average", 0) is None else {}
    init = jax.eval_shape(lambda x: result.module.init(jax.random.key(0), x, **kw), x)
    assert jax.tree.structure(init) == jax.tree.structure(result.variables)
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, result.variables)
    if hasattr(m, "eps"):  # torch's eps, whatever the linen default (RMSNorm: None -> finfo)
        assert result.module.epsilon == (torch.finfo(F64).eps if m.eps is None else m.eps)
    # kwargs rebuilds the same module
    assert type(result.module)(**result.kwargs) == result.module


def test_kwargs_are_the_mapped_settings():
    m = nn.BatchNorm2d(3, eps=1e-3, momentum=0.3)
    assert from_torch(m).kwargs == {"epsilon": 1e-3, "momentum": 0.3, "convention": "torch"}
    assert from_torch(m, layout="torch", convention="flax").kwargs == {
        "axis": 1, "epsilon": 1e-3, "momentum": pytest.approx(0.7),
    }
    assert from_torch(nn.BatchNorm1d(3, dtype=F64)).kwargs["param_dtype"] == jnp.float64
    assert isinstance(from_torch(nn.SyncBatchNorm(3)).module, linen.BatchNorm)
    assert from_torch(nn.GroupNorm(4, 8)).kwargs == {"num_groups": 4, "epsilon": 1e-5}
    assert from_torch(nn.InstanceNorm2d(8), layout="torch").kwargs == {
        "epsilon": 1e-5, "feature_axes": 1, "use_scale": False, "use_bias": False,
    }
    assert from_torch(nn.RMSNorm(8, elementwise_affine=False)).module.epsilon == float(np.finfo(np.float32).eps)
    assert from_torch(nn.RMSNorm(8), input_dtype=torch.bfloat16).module.epsilon == 2.0**-7
    assert from_torch(nn.RMSNorm(8), input_dtype=jnp.float16).module.epsilon == 2.0**-10


@pytest.mark.parametrize("layout", BOTH)
def test_batch_norm_flax_convention(layout):
    """Outputs and running mean as torch; the variance folds in the biased batch variance."""
    m, g, shape, trailing = _prepared("bn2d")
    old_mean, old_var = m.running_mean.clone().numpy(), m.running_var.clone().numpy()
    module, variables = from_torch(m, layout=layout, convention="flax")
    assert module.convention == "flax" and module.momentum == pytest.approx(0.7)
    x = _data(g, shape)
    with torch.no_grad():
        want = m(x).numpy()
    y, new = jax.jit(lambda v, x: module.apply(v, x, use_running_average=False, mutable=["batch_stats"]))(
        variables, jnp.asarray(_to_layout(x.numpy(), layout, trailing))
    )
    np.testing.assert_allclose(_from_layout(y, layout, trailing), want, **TOL)
    new = new["batch_stats"]
    np.testing.assert_allclose(new["mean"], m.running_mean.numpy(), **TOL)
    batch_var = x.numpy().var(axis=(0, 2, 3))
    np.testing.assert_allclose(new["var"], 0.7 * old_var + 0.3 * batch_var, **TOL)
    assert not np.allclose(new["var"], m.running_var.numpy(), rtol=1e-6)
    assert not np.allclose(new["mean"], old_mean, rtol=1e-3)


def test_float32_layers_keep_float32():
    m = nn.BatchNorm2d(3)
    _, variables = from_torch(m)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_module_import_does_not_import_torch():
    code = "import sys, jaxnorm, jaxnorm.torch_import; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (lambda: nn.BatchNorm2d(3, momentum=None), {"convention": "flax"}, ValueError,
         "momentum=None .*convention='torch'"),
        (lambda: nn.InstanceNorm2d(3, track_running_stats=True), {}, NotImplementedError, "track_running_stats"),
        (lambda: nn.GroupNorm(2, 4), {"layout": "torch"}, NotImplementedError, "channels-last"),
        (lambda: nn.LayerNorm((4, 5)), {}, ValueError, "layout='torch'"),
        (lambda: nn.RMSNorm((4, 5)), {"layout": "flax"}, ValueError, "layout='torch'"),
        (lambda: nn.Linear(3, 4), {}, TypeError, "cannot import .*Linear.*supported"),
        (lambda: nn.LazyBatchNorm2d(), {}, ValueError, "lazy"),
        (lambda: np.zeros(3), {}, TypeError, "torch.nn.Module"),
        (lambda: nn.BatchNorm2d(3), {"layout": "NHWC"}, ValueError, "layout must be one of"),
        (lambda: nn.BatchNorm2d(3), {"convention": "keras"}, ValueError, "convention must be one of"),
    ],
)
def test_from_torch_errors(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        from_torch(make(), **kwargs)


def test_weight_importer_errors():
    with pytest.raises(ValueError, match="carries no weight normalization"):
        weight_norm_from_torch(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="carries no spectral normalization"):
        spectral_norm_from_torch(parametrizations.weight_norm(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="vector"):
        spectral_norm_from_torch(parametrizations.spectral_norm(nn.Linear(3, 4), "bias"), "bias")
    with pytest.raises(NotImplementedError, match="layout='torch'"):
        weight_norm_from_torch(parametrizations.weight_norm(nn.ConvTranspose2d(3, 4, 2)))
    with pytest.raises(NotImplementedError, match="spectral_norm_from_torch: Linear.weight carries 2 chained"):
        m = parametrizations.weight_norm(nn.Linear(3, 4))
        spectral_norm_from_torch(parametrizations.spectral_norm(m))
    with pytest.raises(TypeError, match="str"):
        weight_norm_from_torch(parametrizations.weight_norm(nn.Linear(3, 4)), 0)


# --------------------------------------------------- weight parametrizations

WEIGHT_MODULES = {
    "linear": lambda: nn.Linear(5, 4, dtype=F64),
    "conv1d": lambda: nn.Conv1d(3, 4, 3, dtype=F64),
    "conv2d": lambda: nn.Conv2d(3, 4, (2, 3), dtype=F64),
    "conv3d_groups": lambda: nn.Conv3d(4, 6, 2, groups=2, dtype=F64),
    "conv_transpose2d": lambda: nn.ConvTranspose2d(3, 4, 2, dtype=F64),  # layout="torch" only
}


def _kernel_in_layout(w_torch, layout):
    """torch's (out, in, *k) weight in the layout the importer promises."""
    w = np.asarray(w_torch)
    if layout == "torch":
        return w
    return w.T if w.ndim == 2 else np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def _weight_params():
    return [(n, lay) for n in sorted(WEIGHT_MODULES) for lay in BOTH if not (n == "conv_transpose2d" and lay == "flax")]


def _forward_input(m, weight_ndim):
    """A zero input for the layer ``m`` (its forward runs the legacy hooks)."""
    if isinstance(m, nn.Linear):
        return torch.zeros(1, m.in_features, dtype=F64)
    return torch.zeros((1, m.in_channels) + (3,) * (weight_ndim - 2), dtype=F64)


WN_PARAMS = [
    (name, layout, dim, legacy)
    for name, layout in _weight_params()
    for dim in ([0, 1, None] if name in ("linear", "conv2d") else [0])
    for legacy in (False, True)
]


@pytest.mark.parametrize("name, layout, dim, legacy", WN_PARAMS)
def test_weight_norm_equals_torch_weight(name, layout, dim, legacy):
    m = WEIGHT_MODULES[name]()
    if legacy:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            nn.utils.weight_norm(m, dim=dim)
        g_t, v_t = m.weight_g, m.weight_v
    else:
        parametrizations.weight_norm(m, dim=dim)
        g_t, v_t = m.parametrizations.weight.original0, m.parametrizations.weight.original1
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        v_t.copy_(torch.randn(v_t.shape, generator=gen, dtype=F64))
        g_t.copy_(2.0 + torch.rand(g_t.shape, generator=gen, dtype=F64))  # g != ‖v‖
    if legacy:
        m(_forward_input(m, v_t.ndim))  # the legacy hook recomputes the weight
    want = m.weight.detach().numpy()
    arrays, kwargs = weight_norm_from_torch(m, layout=layout)
    assert set(arrays) == {"v", "g"} and set(kwargs) == {"feature_axis"}
    if dim is None:
        assert kwargs["feature_axis"] is None and arrays["g"].shape == ()
    else:
        assert arrays["g"].shape == (want.shape[dim],)
    w = _wn(**arrays, **kwargs)
    if name == "conv_transpose2d" or layout == "torch":
        np.testing.assert_allclose(w, want, **TOL)
    else:
        np.testing.assert_allclose(w, _kernel_in_layout(want, layout), **TOL)
        if dim == 0:
            assert kwargs["feature_axis"] == -1


def test_weight_norm_flax_layout_end_to_end():
    """The imported kernels compute torch's layers with Flax's dense and conv conventions."""
    gen = torch.Generator().manual_seed(5)
    lin = parametrizations.weight_norm(nn.Linear(5, 4, dtype=F64))
    conv = parametrizations.weight_norm(nn.Conv2d(3, 4, (2, 3), dtype=F64))
    for m in (lin, conv):
        with torch.no_grad():
            m.parametrizations.weight.original0.mul_(1.7)
    x = torch.randn(2, 5, generator=gen, dtype=F64)
    arrays, kwargs = weight_norm_from_torch(lin)
    y = x.numpy() @ np.asarray(jn.weight_norm(**arrays, **kwargs)) + lin.bias.detach().numpy()
    np.testing.assert_allclose(y, lin(x).detach().numpy(), **TOL)
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=F64)
    arrays, kwargs = weight_norm_from_torch(conv)
    y = jax.lax.conv_general_dilated(
        jnp.asarray(x.numpy()).transpose(0, 2, 3, 1), jn.weight_norm(**arrays, **kwargs), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + conv.bias.detach().numpy()
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), -1, 1), conv(x).detach().numpy(), **TOL)


SN_LEGACY = [
    ("linear", "flax", 3), ("linear", "torch", 1), ("conv1d", "flax", 1), ("conv2d", "flax", 3),
    ("conv2d", "torch", 3), ("conv3d_groups", "flax", 3), ("conv_transpose2d", "torch", 3),
]
SN_PARAM = [("linear", "torch"), ("linear", "flax"), ("conv1d", "flax"), ("conv2d", "flax"), ("conv3d_groups", "flax"),
            ("conv_transpose2d", "torch")]


@pytest.mark.parametrize("name, layout, n_iterations", SN_LEGACY)
def test_spectral_norm_legacy_matches_exactly(name, layout, n_iterations):
    """torch.nn.utils.spectral_norm: same weight and updated u as jn.spectral_norm."""
    m = WEIGHT_MODULES[name]()
    nn.utils.spectral_norm(m, n_power_iterations=n_iterations, eps=1e-10)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        m.weight_orig.copy_(torch.randn(m.weight_orig.shape, generator=gen, dtype=F64))
        m.weight_u.copy_(3.0 * torch.randn(m.weight_u.shape, generator=gen, dtype=F64))
    arrays, kwargs = spectral_norm_from_torch(m, layout=layout)
    assert kwargs["n_iterations"] == n_iterations and kwargs["epsilon"] == 1e-10
    if name == "conv_transpose2d":
        assert kwargs["feature_axis"] == 1  # torch's default dim for transposed convolutions
    elif layout == "flax":
        assert kwargs["feature_axis"] == -1
    m.train()
    m(_forward_input(m, m.weight_orig.ndim))  # the pre-hook runs the power iteration
    w_sn, u = _sn(**arrays, **kwargs)
    np.testing.assert_allclose(u, m.weight_u.numpy(), **TOL)
    want = m.weight.detach().numpy()
    np.testing.assert_allclose(w_sn, want if name == "conv_transpose2d" else _kernel_in_layout(want, layout), **TOL)


@pytest.mark.parametrize("name, layout", SN_PARAM)
def test_spectral_norm_parametrization_u_sequence_and_weight(name, layout):
    """parametrizations.spectral_norm: our new u is torch's next _u; torch's weight is w / ‖Wᵀu‖."""
    m = WEIGHT_MODULES[name]()
    parametrizations.spectral_norm(m, n_power_iterations=3)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        m.parametrizations.weight.original.copy_(
            torch.randn(m.parametrizations.weight.original.shape, generator=gen, dtype=F64)
        )
    m.train()
    _ = m.weight  # torch iterates on the new weight: now _v = N(Wᵀ _u)
    arrays, kwargs = spectral_norm_from_torch(m, layout=layout)
    w_torch = m.weight.detach().numpy()  # the next training-mode access: 3 more steps
    sn = m.parametrizations.weight[0]
    w_sn, u = _sn(**arrays, **kwargs)
    np.testing.assert_allclose(u, sn._u.numpy(), **TOL)
    w = m.parametrizations.weight.original.detach().numpy()
    mat = np.moveaxis(w, sn.dim, 0).reshape(w.shape[sn.dim], -1)
    np.testing.assert_allclose(w_torch, w / np.linalg.norm(mat.T @ np.asarray(u)), **TOL)
    in_layout = w_torch if name == "conv_transpose2d" else _kernel_in_layout(w_torch, layout)
    assert not np.allclose(w_sn, in_layout, rtol=1e-8, atol=0)  # one half step apart


def test_results_are_named_tuples():
    result = from_torch(nn.LayerNorm(3))
    assert isinstance(result, FromTorch) and result.module is result[0]
    arrays, kwargs = spectral_norm_from_torch(parametrizations.spectral_norm(nn.Linear(3, 4)))
    assert set(arrays) == {"w", "u"} and arrays["w"].shape == (3, 4) and arrays["u"].shape == (4,)
    assert kwargs == {"n_iterations": 1, "epsilon": 1e-12, "feature_axis": -1}
