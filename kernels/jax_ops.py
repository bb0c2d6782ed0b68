"""JAX binding of the grouped-normalization kernels: a custom VJP whose backward is the backward kernel.

:func:`grouped_norm` normalizes an ``(N, ..., C)`` or ``(N, C, ...)`` array
with per-``(N, group)`` statistics (see :mod:`jaxnorm_kernels.plan` for how
GroupNorm, InstanceNorm, LayerNorm and RMSNorm map onto it). Under ``jit``
it is a few Triton launches; ``jax.grad`` runs the backward kernels, which
save only x, the scale and bias, and two float32 numbers per group.

Launchers. On a GPU, kernels go through ``jax_triton.triton_call`` (imported
on first use: it raises ImportError on a CPU-only jax). With
``TRITON_INTERPRET=1`` and no GPU, they run in Triton's interpreter on
PyTorch CPU tensors through ``jax.pure_callback`` — slow, for testing the
binding without a GPU.

Transformations. ``jit``, reverse mode and ``vmap`` (a batching rule that
folds the mapped axis into N; per-instance scale/bias fall back to a loop).
Forward mode is not available (a custom VJP); callers wanting ``jvp`` use
the XLA path.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm_kernels.launches import LIKE_X, backward_launches, forward_launches
from jaxnorm_kernels.plan import layout_of, plan

__all__ = ["SUPPORTED_DTYPES", "grouped_norm", "launcher_available"]

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Config:
    """The static settings of one normalization."""

    num_groups: int
    channel_axis: int
    epsilon: float
    center: bool
    silu: bool
    has_scale: bool
    has_bias: bool


# ------------------------------------------------------------- launchers


def launcher_available() -> str | None:
    """``"gpu"`` (jax_triton), ``"interpreter"`` (TRITON_INTERPRET=1, no GPU), or None."""
    if jax.default_backend() == "gpu":
        try:
            import jax_triton  # noqa: F401
        except ImportError:
            return None
        return "gpu"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter"
    return None


def _out_structs(launch, x_dtype):
    return [jax.ShapeDtypeStruct(o.shape, x_dtype if o.dtype == LIKE_X else jnp.float32) for o in launch.outputs]


def _launch_gpu(launch, args, x_dtype):
    import jax_triton

    zeroed = tuple(i for i, o in enumerate(launch.outputs) if o.zeroed)
    outs = jax_triton.triton_call(*args, kernel=launch.kernel, out_shape=_out_structs(launch, x_dtype),
                                  grid=launch.grid, num_warps=launch.num_warps, zeroed_outputs=zeroed,
                                  **launch.constexprs)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def _to_torch(a):
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _from_torch(t):
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(jnp.bfloat16)
    return t.numpy()


def _launch_interpreter(launch, args, x_dtype):
    structs = _out_structs(launch, x_dtype)

    def host(*arrays):
        import torch

        ins = [_to_torch(a) for a in arrays]
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        outs = [(torch.zeros if o.zeroed else torch.empty)(o.shape, dtype=dtypes[str(s.dtype)])
                for o, s in zip(launch.outputs, structs)]
        launch.kernel[launch.grid](*ins, *outs, **launch.constexprs)
        return tuple(_from_torch(t) for t in outs)

    return list(jax.pure_callback(host, tuple(structs), *args))


def _run(launches, env, x_dtype):
    kind = launcher_available()
    if kind is None:
        raise RuntimeError("jaxnorm_kernels: the Triton kernels need a CUDA GPU with jax_triton installed "
                           "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    launch_fn = _launch_gpu if kind == "gpu" else _launch_interpreter
    for launch in launches:
        outs = launch_fn(launch, [env[name] for name in launch.inputs], x_dtype)
        env.update({o.name: t for o, t in zip(launch.outputs, outs)})
    return env


def _params(scale, bias):
    dummy = jnp.zeros((1,), jnp.float32)
    return {"scale": dummy if scale is None else scale, "bias": dummy if bias is None else bias}


# ----------------------------------------------------- forward / backward ops


def _forward(cfg: Config, x, scale, bias):
    layout = layout_of(x.shape, num_groups=cfg.num_groups, channel_axis=cfg.channel_axis)
    launches = forward_launches(layout, plan(layout), x.shape, epsilon=cfg.epsilon, center=cfg.center,
                                has_scale=cfg.has_scale, has_bias=cfg.has_bias, silu=cfg.silu)
    env = _run(launches, {"x": x, **_params(scale, bias)}, x.dtype)
    return env["y"], env["m"], env["r"]


def _backward_parts(cfg: Config, dy, x, scale, bias, m, r, rows=None):
    layout = layout_of(x.shape, num_groups=cfg.num_groups, channel_axis=cfg.channel_axis)
    p = plan(layout, rows=rows)
    launches = backward_launches(layout, p, x.shape, center=cfg.center, has_scale=cfg.has_scale,
                                 has_bias=cfg.has_bias, silu=cfg.silu)
    env = _run(launches, {"x": x, "dy": dy, "m": m, "r": r, **_params(scale, bias)}, x.dtype)
    return env["dx"], env["dscale_parts"], env["dbias_parts"]


def _merge(a, axis_size):
    """Fold a leading vmapped axis into axis 0."""
    return a.reshape((axis_size * a.shape[1],) + a.shape[2:])


def _batched(args, in_batched, axis_size):
    return [a if b or a is None else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, b in zip(args, in_batched)]


@functools.lru_cache(maxsize=None)
def _forward_op(cfg: Config):
    @jax.custom_batching.custom_vmap
    def op(x, scale, bias):
        return _forward(cfg, x, scale, bias)

    @op.def_vmap
    def rule(axis_size, in_batched, x, scale, bias):
        x_b, s_b, b_b = in_batched
        if s_b or b_b:  # per-instance parameters: one launch per instance
            out = jax.lax.map(lambda a: _forward(cfg, *a), tuple(_batched((x, scale, bias), in_batched, axis_size)))
            return out, (True, True, True)
        if not x_b:
            return _forward(cfg, x, scale, bias), (False, False, False)
        y, m, r = _forward(cfg, _merge(x, axis_size), scale, bias)
        return (y.reshape(x.shape), m.reshape(axis_size, -1), r.reshape(axis_size, -1)), (True, True, True)

    return op


@functools.lru_cache(maxsize=None)
def _backward_op(cfg: Config):
    @jax.custom_batching.custom_vmap
    def op(dy, x, scale, bias, m, r):
        dx, ds, db = _backward_parts(cfg, dy, x, scale, bias, m, r)
        return dx, ds.sum(0), db.sum(0)

    @op.def_vmap
    def rule(axis_size, in_batched, dy, x, scale, bias, m, r):
        if in_batched[2] or in_batched[3]:
            args = tuple(_batched((dy, x, scale, bias, m, r), in_batched, axis_size))
            return jax.lax.map(lambda a: op(*a), args), (True, True, True)
        dy, x, m, r = _batched((dy, x, m, r), [in_batched[i] for i in (0, 1, 4, 5)], axis_size)
        # One row per backward program divides the partial sums by instance.
        dx, ds, db = _backward_parts(cfg, _merge(dy, axis_size), _merge(x, axis_size), scale, bias,
                                     _merge(m, axis_size), _merge(r, axis_size), rows=1)
        ds = ds.reshape(axis_size, -1, ds.shape[-1]).sum(1)
        db = db.reshape(axis_size, -1, db.shape[-1]).sum(1)
        return (dx.reshape(x.shape), ds, db), (True, True, True)

    return op


# ----------------------------------------------------------------- public


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _norm(cfg, x, scale, bias):
    return _forward_op(cfg)(x, scale, bias)[0]


def _norm_fwd(cfg, x, scale, bias):
    y, m, r = _forward_op(cfg)(x, scale, bias)
    return y, (x, scale, bias, m, r)


def _norm_bwd(cfg, res, dy):
    x, scale, bias, m, r = res
    dx, dscale, dbias = _backward_op(cfg)(dy, x, scale, bias, m, r)
    dscale = None if scale is None else dscale.astype(scale.dtype)
    dbias = None if bias is None else dbias.astype(bias.dtype)
    return dx, dscale, dbias


_norm.defvjp(_norm_fwd, _norm_bwd)


def grouped_norm(x, scale=None, bias=None, *, num_groups: int, channel_axis: int = -1, epsilon: float = 1e-5,
                 center: bool = True, silu: bool = False):
    """Normalize ``x`` with per-(example, channel group) statistics, on the Triton kernels.

    ``y = act(((x − μ) / sqrt(σ² + ε)) · scale[c] + bias[c])`` with μ, σ² the
    mean and biased variance of each example's group of ``C / num_groups``
    channels over all positions (μ = 0 and σ² = mean(x²) when not
    ``center``), ``act`` = SiLU or identity.

    Args:
      x: float32/bfloat16/float16 array ``(N, ..., C)`` (``channel_axis=-1``)
        or ``(N, C, ...)`` (``channel_axis=1``).
      scale, bias: ``(C,)`` or None.
      num_groups: channel groups (C for InstanceNorm; 1 with a ``(rows, D)``
        input for LayerNorm/RMSNorm).
      channel_axis: 1 or -1.
      epsilon: added to the variance.
      center: subtract the mean (False: RMSNorm).
      silu: apply SiLU after the affine.

    Returns:
      ``y`` with ``x``'s shape and dtype.
    """
    cfg = Config(int(num_groups), int(channel_axis), float(epsilon), bool(center), bool(silu),
                 scale is not None, bias is not None)
    return _norm(cfg, x, scale, bias)
