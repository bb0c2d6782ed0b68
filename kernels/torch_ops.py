"""Run the grouped-normalization kernels on PyTorch tensors (a GPU, or the CPU under TRITON_INTERPRET=1).

The kernels' own test harness: with ``TRITON_INTERPRET=1`` set before
triton is imported, the same kernels run on CPU tensors, so their logic is
tested without a GPU.
"""

from __future__ import annotations

import torch

from jaxnorm_kernels.launches import LIKE_X, backward_launches, forward_launches
from jaxnorm_kernels.plan import layout_of, plan

__all__ = ["group_norm_backward", "group_norm_forward"]


def _run(launches, env, x_dtype, device):
    for launch in launches:
        outs = []
        for out in launch.outputs:
            dtype = x_dtype if out.dtype == LIKE_X else torch.float32
            alloc = torch.zeros if out.zeroed else torch.empty
            outs.append(alloc(out.shape, dtype=dtype, device=device))
        args = [env[name] for name in launch.inputs]
        launch.kernel[launch.grid](*args, *outs, num_warps=launch.num_warps, **launch.constexprs)
        env.update({out.name: t for out, t in zip(launch.outputs, outs)})
    return env


def _setup(x, scale, bias, num_groups, channel_axis, plan_kw):
    x = x.contiguous()
    layout = layout_of(tuple(x.shape), num_groups=num_groups, channel_axis=channel_axis)
    dummy = torch.zeros(1, dtype=torch.float32, device=x.device)
    env = {"x": x, "scale": dummy if scale is None else scale.contiguous(),
           "bias": dummy if bias is None else bias.contiguous()}
    return x, layout, plan(layout, **plan_kw), env


def group_norm_forward(x, scale=None, bias=None, *, num_groups, channel_axis=-1, epsilon=1e-5, center=True,
                       silu=False, **plan_kw):
    """``(y, m, r)``: the output and, per ``(N, G)``, the mean of ``x − K`` and ``1/sqrt(var + ε)``.

    See :mod:`jaxnorm_kernels.group_norm_triton` for the formulas. ``plan_kw``
    (``split``, ``rows``, ``tile_elements``) override :func:`jaxnorm_kernels.plan.plan`'s choices.
    """
    x, layout, p, env = _setup(x, scale, bias, num_groups, channel_axis, plan_kw)
    launches = forward_launches(layout, p, x.shape, epsilon=epsilon, center=center,
                                has_scale=scale is not None, has_bias=bias is not None, silu=silu)
    env = _run(launches, env, x.dtype, x.device)
    return env["y"], env["m"].view(layout.n, layout.g), env["r"].view(layout.n, layout.g)


def group_norm_backward(dy, x, scale, bias, m, r, *, num_groups, channel_axis=-1, center=True, silu=False,
                        **plan_kw):
    """``(dx, dscale, dbias)`` (float32 parameter gradients; None where the parameter is None)."""
    x, layout, p, env = _setup(x, scale, bias, num_groups, channel_axis, plan_kw)
    env.update(dy=dy.contiguous(), m=m.contiguous().view(-1), r=r.contiguous().view(-1))
    launches = backward_launches(layout, p, x.shape, center=center, has_scale=scale is not None,
                                 has_bias=bias is not None, silu=silu)
    env = _run(launches, env, x.dtype, x.device)
    dscale = env["dscale_parts"].sum(0) if scale is not None else None
    dbias = env["dbias_parts"].sum(0) if bias is not None else None
    return env["dx"], dscale, dbias
