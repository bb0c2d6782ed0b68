"""Import PyTorch normalization layers and weight parametrizations into jaxnorm.

Three functions, each reading one PyTorch module (PyTorch is imported only
when they are called; jaxnorm does not depend on it):

* :func:`from_torch` turns a normalization layer (``BatchNorm1d/2d/3d``,
  ``SyncBatchNorm``, ``GroupNorm``, ``LayerNorm``, ``RMSNorm``,
  ``InstanceNorm1d/2d/3d``, ``LocalResponseNorm``) into the matching
  :mod:`jaxnorm.linen` module and its variables::

      module, variables = from_torch(torch_layer)
      y = module.apply(variables, x)                       # x channels-last
      y, upd = module.apply(variables, x, use_running_average=False,
                            mutable=["batch_stats"])       # BatchNorm, training

* :func:`weight_norm_from_torch` and :func:`spectral_norm_from_torch` read a
  layer whose weight carries ``torch.nn.utils.parametrizations.weight_norm`` /
  ``spectral_norm`` (or the legacy ``torch.nn.utils.weight_norm`` /
  ``spectral_norm`` hooks) and return the arrays and settings of
  :func:`jaxnorm.weight_norm` / :func:`jaxnorm.spectral_norm`::

      arrays, kwargs = weight_norm_from_torch(conv)        # {"v", "g"}, {"feature_axis"}
      w = jn.weight_norm(**arrays, **kwargs)

      arrays, kwargs = spectral_norm_from_torch(conv)      # {"w", "u"}, {...}
      w_sn, u = jn.spectral_norm(**arrays, **kwargs)

``layout`` picks the array layout of the JAX side. ``"flax"`` (default):
channels-last data (``NHWC``; BatchNorm ``axis=-1``) and Flax kernels
(``Linear (out, in) -> (in, out)``, ``Conv (O, I, *k) -> (*k, I, O)``,
output features on axis -1). ``"torch"``: PyTorch's own layouts (``NCHW``
data, channel axis 1; kernels kept ``(out, in, ...)``, output features on
axis 0).

Arrays keep PyTorch's dtype (float64 needs ``jax_enable_x64``).

Uses: jaxnorm.linen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

__all__ = ["FromTorch", "TorchWeights", "from_torch", "spectral_norm_from_torch", "weight_norm_from_torch"]

_LAYOUTS = ("flax", "torch")
_CONVENTIONS = ("torch", "flax")


class FromTorch(NamedTuple):
    """What :func:`from_torch` returns: unpack as ``module, variables``.

    Attributes:
      module: the :mod:`jaxnorm.linen` module, constructed with the settings
        that make it compute what the PyTorch layer computes.
      variables: its variables, e.g. ``{"params": {"scale", "bias"},
        "batch_stats": {"mean", "var"}}`` (``{}`` for a layer without any),
        structured as ``module.init`` would make them.
    """

    module: Any
    variables: dict

    @property
    def kwargs(self) -> dict:
        """The constructor arguments of :attr:`module` that differ from their defaults.

        ``type(result.module)(**result.kwargs)`` rebuilds the module;
        ``result.module.clone(dtype=...)`` changes a setting.
        """
        out = {}
        for field in dataclasses.fields(self.module):
            if field.name in ("parent", "name"):
                continue
            value = getattr(self.module, field.name)
            if field.default is dataclasses.MISSING or value != field.default:
                out[field.name] = value
        return out


class TorchWeights(NamedTuple):
    """What the weight importers return: unpack as ``arrays, kwargs``.

    ``arrays`` holds the core function's array arguments and ``kwargs`` its
    settings, so that ``jn.weight_norm(**arrays, **kwargs)`` or
    ``jn.spectral_norm(**arrays, **kwargs)`` is the call.
    """

    arrays: dict
    kwargs: dict


# ------------------------------------------------------------------ helpers


def _torch(fn):
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError(f"{fn}: needs PyTorch (pip install torch) to read PyTorch modules") from e
    return torch


def _check_module(fn, module):
    torch = _torch(fn)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"{fn}: expected a torch.nn.Module, got {type(module).__name__}; pass the layer itself, "
            f"e.g. {fn}(torch.nn.BatchNorm2d(64))"
        )
    from torch.nn.modules.lazy import LazyModuleMixin

    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"{fn}: {type(module).__name__} has uninitialized (lazy) parameters; run one forward "
            f"pass in PyTorch first so that its shapes are known"
        )
    return torch


def _check_choice(fn, name, value, choices, meaning):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {choices}, got {value!r}; {meaning}")


_LAYOUT_MEANING = (
    "'flax' gives channels-last data and (..., in, out) kernels, 'torch' keeps PyTorch's "
    "NCHW data and (out, in, ...) kernels"
)


def _numpy(t):
    """A torch tensor as a NumPy array of the same dtype (bfloat16 included)."""
    t = t.detach().cpu()
    import torch

    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(jnp.bfloat16)
    return t.numpy()


def _array(t, perm=None, shape=None):
    """A torch tensor as a jax array of the same dtype, optionally transposed or reshaped first."""
    a = _numpy(t)
    if perm is not None:
        a = a.transpose(perm)
    if shape is not None:
        a = a.reshape(shape)
    return jnp.asarray(a)


def _np_dtype(t):
    import torch

    return jnp.dtype(jnp.bfloat16) if t.dtype == torch.bfloat16 else jnp.dtype(t.detach().cpu().numpy().dtype)


def _affine(weight, bias, kwargs):
    """``params`` from torch's ``weight``/``bias`` (either may be None); sets use_scale/use_bias."""
    params = {}
    if weight is not None:
        params["scale"] = _array(weight)
        kwargs["param_dtype"] = _np_dtype(weight)
    if bias is not None:
        params["bias"] = _array(bias)
        kwargs.setdefault("param_dtype", _np_dtype(bias))
    return params


def _affine_flags(m, kwargs):
    """``use_scale``/``use_bias`` from the parameters torch actually holds (``affine`` and ``bias=False``)."""
    kwargs["use_scale"] = getattr(m, "weight", None) is not None
    kwargs["use_bias"] = getattr(m, "bias", None) is not None


def _variables(params=None, batch_stats=None):
    out = {}
    if params:
        out["params"] = params
    if batch_stats:
        out["batch_stats"] = batch_stats
    return out


# ------------------------------------------------------ normalization layers


def _batch_norm(fn, torch, m, layout, convention):
    from jaxnorm import linen

    cumulative = m.momentum is None and m.track_running_stats
    if cumulative and convention != "torch":
        raise ValueError(
            f"{fn}: {type(m).__name__} has momentum=None (PyTorch's cumulative moving average over "
            f"num_batches_tracked), which exists only in PyTorch's convention; import it with "
            f"convention='torch' (the default), or set a momentum on the torch module first "
            f"(e.g. module.momentum = 0.1)"
        )
    momentum = 0.1 if m.momentum is None and not m.track_running_stats else m.momentum
    kwargs = {"axis": 1 if layout == "torch" else -1, "epsilon": float(m.eps)}
    if convention == "torch":
        kwargs.update(momentum=None if momentum is None else float(momentum), convention="torch")
    else:
        kwargs["momentum"] = 1.0 - float(momentum)
    _affine_flags(m, kwargs)
    params = _affine(m.weight, m.bias, kwargs)
    if m.track_running_stats:
        stats = {"mean": _array(m.running_mean), "var": _array(m.running_var)}
        if cumulative:
            # The module keeps PyTorch's num_batches_tracked as its batch count.
            stats["count"] = jnp.asarray(int(m.num_batches_tracked), jnp.int32)
    else:
        # torch keeps no running statistics and always normalizes with the batch's.
        kwargs["use_running_average"] = False
        dtype = kwargs.get("param_dtype", jnp.float32)
        stats = {"mean": jnp.zeros((m.num_features,), dtype), "var": jnp.ones((m.num_features,), dtype)}
    return linen.BatchNorm(**kwargs), _variables(params, stats)


def _group_norm(fn, torch, m, layout, convention):
    from jaxnorm import linen

    if layout == "torch":
        raise NotImplementedError(
            f"{fn}: jaxnorm.linen.GroupNorm normalizes channels-last inputs only, so GroupNorm "
            f"cannot be imported with layout='torch'. Use layout='flax' and transpose the input "
            f"(NCHW -> NHWC), or call jaxnorm.group_norm(x, scale, bias, num_groups={m.num_groups}, "
            f"channel_axis=1, epsilon={m.eps})"
        )
    kwargs = {"num_groups": int(m.num_groups), "epsilon": float(m.eps)}
    _affine_flags(m, kwargs)
    params = _affine(m.weight, m.bias, kwargs)
    return linen.GroupNorm(**kwargs), _variables(params)


def _instance_norm(fn, torch, m, layout, convention):
    from jaxnorm import linen

    if m.track_running_stats:
        raise NotImplementedError(
            f"{fn}: {type(m).__name__}(track_running_stats=True) has no jaxnorm counterpart: it "
            f"normalizes with per-instance statistics in training but with running statistics in "
            f"eval mode. Import a module with track_running_stats=False (jaxnorm.linen.InstanceNorm), "
            f"or, for eval mode only, normalize with its running_mean/running_var by "
            f"jaxnorm.batch_norm(..., training=False)"
        )
    kwargs = {"epsilon": float(m.eps), "feature_axes": 1 if layout == "torch" else -1}
    _affine_flags(m, kwargs)
    params = _affine(m.weight, m.bias, kwargs)
    return linen.InstanceNorm(**kwargs), _variables(params)


def _trailing_axes(fn, m, layout):
    shape = tuple(int(s) for s in m.normalized_shape)
    if len(shape) > 1 and layout != "torch":
        raise ValueError(
            f"{fn}: {type(m).__name__} normalizes the trailing axes {shape} of PyTorch's input; "
            f"with layout='flax' it is ambiguous where those axes go once channels move last. "
            f"Pass layout='torch' and feed the input in PyTorch's axis order"
        )
    return -1 if len(shape) == 1 else tuple(range(-len(shape), 0))


def _layer_norm(fn, torch, m, layout, convention):
    from jaxnorm import linen

    axes = _trailing_axes(fn, m, layout)
    kwargs = {"epsilon": float(m.eps), "reduction_axes": axes, "feature_axes": axes}
    kwargs["use_scale"] = m.weight is not None
    kwargs["use_bias"] = m.bias is not None
    params = _affine(m.weight, m.bias, kwargs)
    return linen.LayerNorm(**kwargs), _variables(params)


def _rms_norm(fn, torch, m, layout, convention, input_dtype=None):
    from jaxnorm import linen

    axes = _trailing_axes(fn, m, layout)
    if m.eps is None:
        if input_dtype is None:
            input_dtype = m.weight.dtype if m.weight is not None else torch.get_default_dtype()
        if isinstance(input_dtype, torch.dtype):
            epsilon = float(torch.finfo(input_dtype).eps)
        else:
            epsilon = float(jnp.finfo(input_dtype).eps)
    else:
        epsilon = float(m.eps)
    kwargs = {"epsilon": epsilon, "reduction_axes": axes, "feature_axes": axes}
    kwargs["use_scale"] = m.weight is not None
    params = _affine(m.weight, None, kwargs)
    return linen.RMSNorm(**kwargs), _variables(params)


def _local_response_norm(fn, torch, m, layout, convention):
    from jaxnorm import linen

    kwargs = {
        "size": int(m.size), "alpha": float(m.alpha), "beta": float(m.beta), "k": float(m.k),
        "channel_axis": 1 if layout == "torch" else -1,
    }
    return linen.LocalResponseNorm(**kwargs), {}


def _importers(torch):
    nn = torch.nn
    table = [
        (nn.modules.batchnorm._BatchNorm, _batch_norm),  # BatchNorm1d/2d/3d, SyncBatchNorm
        (nn.GroupNorm, _group_norm),
        (nn.modules.instancenorm._InstanceNorm, _instance_norm),
        (nn.LayerNorm, _layer_norm),
        (nn.LocalResponseNorm, _local_response_norm),
    ]
    if hasattr(nn, "RMSNorm"):
        table.append((nn.RMSNorm, _rms_norm))
    return table


_SUPPORTED = (
    "BatchNorm1d/2d/3d, SyncBatchNorm, GroupNorm, InstanceNorm1d/2d/3d, LayerNorm, RMSNorm, "
    "LocalResponseNorm"
)


def from_torch(module, *, layout: str = "flax", convention: str = "torch", input_dtype=None) -> FromTorch:
    """The :mod:`jaxnorm.linen` module and variables that compute what a PyTorch norm layer does.

    ==========================  ======================================================
    PyTorch                     jaxnorm.linen
    ==========================  ======================================================
    BatchNorm1d/2d/3d,          ``BatchNorm``: ``running_mean/var`` -> ``batch_stats``
    SyncBatchNorm               ``mean/var``; ``weight/bias`` -> ``params``
                                ``scale/bias``. Call with ``use_running_average``
                                (torch's eval / train mode). ``momentum=None``:
                                ``num_batches_tracked`` -> ``batch_stats`` ``count``.
    GroupNorm                   ``GroupNorm(num_groups=...)`` (channels-last only)
    InstanceNorm1d/2d/3d        ``InstanceNorm`` (``track_running_stats=False`` only)
    LayerNorm, RMSNorm          ``LayerNorm`` / ``RMSNorm`` over the trailing
                                ``normalized_shape`` axes; ``scale`` (and ``bias``)
                                of shape ``normalized_shape``
    LocalResponseNorm           ``LocalResponseNorm`` (no variables)
    ==========================  ======================================================

    ``epsilon`` is always set from torch's ``eps`` (the linen defaults differ
    from torch's). BatchNorm: with ``convention="torch"`` (default) the module
    gets ``convention="torch"`` and torch's ``momentum``, and the running
    statistics are copied as they are, so evaluation, training outputs and
    the updated running statistics (unbiased variance) all match PyTorch.
    With ``convention="flax"`` it gets Flax's ``momentum = 1 - torch
    momentum`` instead: a plain Flax-convention module whose outputs match
    and whose running mean updates match, but whose running variance then
    accumulates the biased batch variance (PyTorch's is unbiased). A torch
    BatchNorm with ``track_running_stats=False`` becomes a module with
    ``use_running_average=False`` (it always uses batch statistics, as torch
    does) and placeholder running statistics: apply it with
    ``mutable=["batch_stats"]`` and ignore the updates. A torch BatchNorm
    with ``momentum=None`` (PyTorch's cumulative average) becomes a module
    with ``convention="torch", momentum=None`` whose ``batch_stats`` also
    hold the batch count ``count`` (torch's ``num_batches_tracked``), so its
    updates match PyTorch's too. Layers built with ``affine=False`` or
    ``bias=False`` become modules with ``use_scale``/``use_bias`` False and
    without those parameters.

    Args:
      module: the PyTorch layer (float32, float64 or bfloat16 parameters).
      layout: ``"flax"`` (default): channels-last inputs (``N, ..., C``);
        ``"torch"``: PyTorch's ``N, C, ...`` (channel axis 1). LayerNorm and
        RMSNorm act on the trailing axes either way (a multi-axis
        ``normalized_shape`` needs ``layout="torch"``).
      convention: ``"torch"`` or ``"flax"``: the running-statistics
        convention of an imported BatchNorm (see above); others ignore it.
      input_dtype: only for ``RMSNorm(eps=None)``, where torch takes
        ``finfo(input.dtype).eps`` at run time: the dtype the inputs will
        have. Default: the layer's parameter dtype, else torch's default dtype.

    Returns:
      :class:`FromTorch` ``(module, variables)``; ``.kwargs`` holds the
      module's non-default constructor arguments.

    Raises:
      TypeError: ``module`` is not a ``torch.nn.Module``, or not one of the
        supported layers.
      ValueError: an unknown ``layout`` or ``convention``, uninitialized lazy
        parameters, a multi-axis LayerNorm/RMSNorm with ``layout="flax"``, a
        BatchNorm with ``momentum=None`` and ``convention="flax"``.
      NotImplementedError: an InstanceNorm with ``track_running_stats=True``,
        a GroupNorm with ``layout="torch"``.
      ImportError: PyTorch is not installed.
    """
    fn = "from_torch"
    torch = _check_module(fn, module)
    _check_choice(fn, "layout", layout, _LAYOUTS, _LAYOUT_MEANING)
    _check_choice(
        fn, "convention", convention, _CONVENTIONS,
        "'torch' reproduces PyTorch's running-statistics update exactly, 'flax' uses momentum = 1 - torch's",
    )
    for cls, importer in _importers(torch):
        if isinstance(module, cls):
            if importer is _rms_norm:
                return FromTorch(*importer(fn, torch, module, layout, convention, input_dtype))
            return FromTorch(*importer(fn, torch, module, layout, convention))
    raise TypeError(
        f"{fn}: cannot import {type(module).__module__}.{type(module).__name__}; supported PyTorch "
        f"layers: {_SUPPORTED}. For weight_norm / spectral_norm parametrizations use "
        f"weight_norm_from_torch / spectral_norm_from_torch"
    )


# --------------------------------------------------- weight parametrizations


def _kernel_permutation(fn, torch, module, ndim, layout):
    """The axis permutation taking the torch weight to ``layout``."""
    if layout == "torch":
        return tuple(range(ndim))
    nn = torch.nn
    if isinstance(module, nn.Linear) and ndim == 2:
        return (1, 0)
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return tuple(range(2, ndim)) + (1, 0)
    raise NotImplementedError(
        f"{fn}: no Flax kernel layout is known for the weight of {_name(module)} "
        f"(layout='flax' converts nn.Linear (out, in) -> (in, out) and nn.Conv1d/2d/3d "
        f"(O, I, *k) -> (*k, I, O)); pass layout='torch' to keep PyTorch's layout"
    )


def _feature_axis(dim, perm, layout):
    """Where torch's ``dim`` lands after ``perm`` (negative in Flax's layout, as in jaxnorm)."""
    position = perm.index(dim)
    return position if layout == "torch" else position - len(perm)


def _name(module):
    """The layer's class name (not the ``Parametrized...`` class torch substitutes)."""
    from torch.nn.utils import parametrize

    cls = type(module)
    return cls.__bases__[0].__name__ if parametrize.is_parametrized(module) else cls.__name__


def _hook(module, cls, name):
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, cls) and hook.name == name:
            return hook
    return None


def _parametrization(fn, module, name, cls):
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(module, name):
        return None, None
    plist = module.parametrizations[name]
    found = [p for p in plist if isinstance(p, cls)]
    if not found:
        return None, None
    if len(plist) != 1:
        raise NotImplementedError(
            f"{fn}: {_name(module)}.{name} carries {len(plist)} chained parametrizations "
            f"({', '.join(type(p).__name__ for p in plist)}); only a single one can be imported"
        )
    return plist, found[0]


def _check_name(fn, name):
    if not isinstance(name, str):
        raise TypeError(f"{fn}: name must be the parameter's name as a str, got {name!r}")


def weight_norm_from_torch(module, name: str = "weight", *, layout: str = "flax") -> TorchWeights:
    """The arguments of :func:`jaxnorm.weight_norm` for a PyTorch weight-normalized layer.

    Reads ``torch.nn.utils.parametrizations.weight_norm`` (``original0`` is
    ``g``, ``original1`` is ``v``) or the legacy ``torch.nn.utils.weight_norm``
    (``{name}_g``, ``{name}_v``), so that ``jn.weight_norm(**arrays,
    **kwargs)`` equals the layer's weight in ``layout``. ``g`` is flattened
    to ``(C,)``; torch's ``dim`` becomes ``feature_axis`` (``dim=None``, the
    whole-tensor norm, becomes ``feature_axis=None`` with a scalar ``g``).

    Args:
      module: the torch layer carrying the parametrization.
      name: the parametrized tensor (default ``"weight"``).
      layout: ``"flax"`` (default): ``v`` in Flax kernel layout (``Linear``
        ``(in, out)``, ``Conv`` ``(*k, in, out)``), so ``feature_axis=-1``
        for torch's default ``dim=0``; ``"torch"``: PyTorch's layout kept
        (``feature_axis=dim``), for any layer.

    Returns:
      :class:`TorchWeights` ``({"v": v, "g": g}, {"feature_axis": axis})``.

    Raises:
      TypeError: ``module`` is not a ``torch.nn.Module``, ``name`` not a str.
      ValueError: ``module.{name}`` carries no weight normalization; an
        unknown ``layout``.
      NotImplementedError: ``layout="flax"`` for a layer other than
        ``Linear``/``Conv1d/2d/3d``; chained parametrizations.
    """
    fn = "weight_norm_from_torch"
    torch = _check_module(fn, module)
    _check_name(fn, name)
    _check_choice(fn, "layout", layout, _LAYOUTS, _LAYOUT_MEANING)
    from torch.nn.utils.parametrizations import _WeightNorm
    from torch.nn.utils.weight_norm import WeightNorm

    plist, param = _parametrization(fn, module, name, _WeightNorm)
    if param is not None:
        g, v, dim = plist.original0, plist.original1, param.dim
    else:
        hook = _hook(module, WeightNorm, name)
        if hook is None:
            raise ValueError(
                f"{fn}: {_name(module)}.{name} carries no weight normalization; apply "
                f"torch.nn.utils.parametrizations.weight_norm(module, {name!r}) first, or use "
                f"from_torch for normalization layers"
            )
        g, v, dim = getattr(module, f"{name}_g"), getattr(module, f"{name}_v"), hook.dim
    perm = _kernel_permutation(fn, torch, module, v.ndim, layout)
    v_out = _array(v, perm)
    if dim is None or dim == -1 or g.ndim == 0:  # torch: dim=None is stored as -1, the whole-tensor norm
        return TorchWeights({"v": v_out, "g": _array(g, shape=())}, {"feature_axis": None})
    dim = dim % v.ndim
    return TorchWeights(
        {"v": v_out, "g": _array(g, shape=(-1,))}, {"feature_axis": _feature_axis(dim, perm, layout)}
    )


def spectral_norm_from_torch(module, name: str = "weight", *, layout: str = "flax") -> TorchWeights:
    """The arguments of :func:`jaxnorm.spectral_norm` for a PyTorch spectrally normalized layer.

    Reads ``torch.nn.utils.parametrizations.spectral_norm`` (the unnormalized
    ``original`` weight and the ``_u`` buffer) or the legacy
    ``torch.nn.utils.spectral_norm`` (``{name}_orig``, ``{name}_u``), with
    their ``n_power_iterations``, ``eps`` and ``dim``, and returns
    ``w`` (in ``layout``) and ``u`` for ``jn.spectral_norm(**arrays, **kwargs)``.
    ``u`` lies in the output-feature space in both layouts (a kernel's
    layout only permutes the columns of the matrix view).

    How the result relates to torch's next training-mode forward:

    * legacy ``torch.nn.utils.spectral_norm``: it runs the same iteration as
      jaxnorm (``v <- N(Wᵀu), u <- N(Wv)``, ``σ = uᵀWv``), so the returned
      weight equals torch's and the returned ``u`` its updated ``weight_u``.
    * ``parametrizations.spectral_norm`` starts its loop from its stored
      ``_v`` (``u <- N(Wv), v <- N(Wᵀu)``). torch's ``_v`` equals ``N(Wᵀ _u)``
      whenever the weight has not changed since torch last iterated (after
      registration, or after a training-mode forward); then the returned
      ``u`` equals torch's updated ``_u``, and torch's weight is
      ``w / ‖Wᵀ u‖`` with that ``u`` (one half step further than jaxnorm's
      ``σ = uᵀWv``), so the two weights agree once the iteration has
      converged.

    torch's eval mode (no iteration, σ from the stored ``u`` and ``v``) is
    not reproduced: :func:`jaxnorm.spectral_norm` always iterates.

    Args:
      module: the torch layer carrying the spectral normalization.
      name: the parametrized tensor (default ``"weight"``).
      layout: ``"flax"`` (default): ``w`` in Flax kernel layout, so
        ``feature_axis=-1`` for torch's default ``dim``; ``"torch"``:
        PyTorch's layout (``feature_axis=dim``), for any layer.

    Returns:
      :class:`TorchWeights` ``({"w": w, "u": u}, {"n_iterations": n,
      "epsilon": eps, "feature_axis": axis})``.

    Raises:
      TypeError: ``module`` is not a ``torch.nn.Module``, ``name`` not a str.
      ValueError: ``module.{name}`` carries no spectral normalization, or is
        a vector (torch then just L2-normalizes it: use
        ``jn.weight_norm(v, g, feature_axis=None)``); an unknown ``layout``.
      NotImplementedError: ``layout="flax"`` for a layer other than
        ``Linear``/``Conv1d/2d/3d``; chained parametrizations.
    """
    fn = "spectral_norm_from_torch"
    torch = _check_module(fn, module)
    _check_name(fn, name)
    _check_choice(fn, "layout", layout, _LAYOUTS, _LAYOUT_MEANING)
    from torch.nn.utils.parametrizations import _SpectralNorm
    from torch.nn.utils.spectral_norm import SpectralNorm

    plist, param = _parametrization(fn, module, name, _SpectralNorm)
    if param is not None:
        w, sn = plist.original, param
        if w.ndim < 2:
            raise ValueError(
                f"{fn}: {_name(module)}.{name} has shape {tuple(w.shape)}, a vector, which "
                f"torch just L2-normalizes; use jn.weight_norm(v, g, feature_axis=None) with g = 1"
            )
        u = sn._u
    else:
        sn = _hook(module, SpectralNorm, name)
        if sn is None:
            raise ValueError(
                f"{fn}: {_name(module)}.{name} carries no spectral normalization; apply "
                f"torch.nn.utils.parametrizations.spectral_norm(module, {name!r}) first, or use "
                f"from_torch for normalization layers"
            )
        w, u = getattr(module, f"{name}_orig"), getattr(module, f"{name}_u")
    dim = sn.dim % w.ndim
    perm = _kernel_permutation(fn, torch, module, w.ndim, layout)
    kwargs = {
        "n_iterations": int(sn.n_power_iterations), "epsilon": float(sn.eps),
        "feature_axis": _feature_axis(dim, perm, layout),
    }
    return TorchWeights({"w": _array(w, perm), "u": _array(u)}, kwargs)
