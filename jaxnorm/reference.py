"""Float64 NumPy references of jaxnorm's functions, for checking.

Straightforward two-pass transcriptions of the formulas, written without any
of jaxnorm's machinery: every input is converted to float64, the mean is
taken first and the variance about it second. They are the oracles of
``python -m jaxnorm`` and of the test suite. Arguments mirror the jaxnorm
functions of the same name (parameters per channel or per example, masks
whose False entries are left out and give 0); results are float64.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "batch_norm",
    "batch_renorm",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "representative_batch_norm",
    "rms_norm",
    "spectral_norm",
    "switchable_norm",
    "weight_norm",
    "weight_standardize",
]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _axes(axis, ndim):
    axis = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return tuple(sorted(a % ndim for a in axis))


def _place(p, ndim, positions):
    """Reshape p to rank ndim with its axes at positions (1 elsewhere)."""
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return p.reshape(shape)


def _normalize(x, axes, epsilon, where, center):
    """(x - mean) / sqrt(var + eps) over axes (keepdims), two passes, float64."""
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    xs = np.where(mask, x, 0.0)
    count = np.maximum(mask.sum(axes, keepdims=True), 1)
    mean = xs.sum(axes, keepdims=True) / count if center else 0.0
    dev = np.where(mask, x - mean, 0.0)
    var = (dev * dev).sum(axes, keepdims=True) / count
    return np.where(mask, dev / np.sqrt(var + epsilon), 0.0), mask


def _affine(xhat, mask, scale, bias):
    y = xhat
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return np.where(mask, y, 0.0)


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-5, where=None):
    """(x − E[x]) / sqrt(Var[x] + ε) · scale + bias over ``axis``."""
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    xhat, mask = _normalize(x, axes, epsilon, where, center=True)
    params = []
    for p in (_f64(scale), _f64(bias)):
        if p is not None:
            positions = axes if p.ndim == len(axes) else (0,) + axes
            p = _place(p, x.ndim, positions)
        params.append(p)
    return _affine(xhat, mask, *params)


def rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6, where=None):
    """x / sqrt(E[x²] + ε) · scale over ``axis``."""
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    xhat, mask = _normalize(x, axes, epsilon, where, center=False)
    p = _f64(scale)
    if p is not None:
        positions = axes if p.ndim == len(axes) else (0,) + axes
        p = _place(p, x.ndim, positions)
    return _affine(xhat, mask, p, None)


def group_norm(x, scale=None, bias=None, *, num_groups, channel_axis=-1, epsilon=1e-5, where=None):
    """Per example and group of channels: (x − μ) / sqrt(σ² + ε) · scale + bias."""
    x = _f64(x)
    c = channel_axis % x.ndim
    channels = x.shape[c]
    # Move channels last and split them: (N, spatial..., G, C/G).
    xt = np.moveaxis(x, c, -1)
    grouped = xt.reshape(xt.shape[:-1] + (num_groups, channels // num_groups))
    mask = None
    if where is not None:
        mt = np.moveaxis(np.broadcast_to(where, x.shape), c, -1)
        mask = mt.reshape(grouped.shape)
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    xhat, mask = _normalize(grouped, axes, epsilon, mask, center=True)
    xhat = np.moveaxis(xhat.reshape(xt.shape), -1, c)
    mask = np.moveaxis(mask.reshape(xt.shape), -1, c)
    params = []
    for p in (_f64(scale), _f64(bias)):
        if p is not None:
            p = _place(p, x.ndim, (c,) if p.ndim == 1 else (0, c))
        params.append(p)
    return _affine(xhat, mask, *params)


def instance_norm(x, scale=None, bias=None, *, channel_axis=-1, epsilon=1e-5, where=None):
    """Per example and channel over the spatial axes."""
    channels = np.shape(x)[channel_axis]
    return group_norm(
        x, scale, bias, num_groups=channels, channel_axis=channel_axis,
        epsilon=epsilon, where=where,
    )


def _channel_params(x, c_axis, params):
    """Place (C,) or per-example (N, C) parameters against x."""
    out = []
    for p in params:
        p = _f64(p)
        if p is not None:
            p = _place(p, x.ndim, (c_axis,) if p.ndim == 1 else (0, c_axis))
        out.append(p)
    return out


def batch_norm(x, scale, bias, mean, var, *, training, momentum=0.99, epsilon=1e-5,
               channel_axis=-1, where=None):
    """BatchNorm in the Flax convention; returns ``(y, new_mean, new_var)``.

    Training: batch mean and biased variance over every axis but the channel
    axis, running statistics ``momentum·old + (1 − momentum)·batch``.
    Inference: the running ``mean`` and ``var``.
    """
    x = _f64(x)
    c = channel_axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != c)
    scale, bias = _channel_params(x, c, (scale, bias))
    mean, var = _f64(mean), _f64(var)
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    if not training:
        xhat = (x - _place(mean, x.ndim, (c,))) / np.sqrt(_place(var, x.ndim, (c,)) + epsilon)
        return _affine(xhat, mask, scale, bias), mean, var
    xhat, mask = _normalize(x, axes, epsilon, where, center=True)
    count = mask.sum(axes)
    batch_mean = np.where(mask, x, 0.0).sum(axes) / np.maximum(count, 1)
    dev = np.where(mask, x - _place(batch_mean, x.ndim, (c,)), 0.0)
    batch_var = (dev * dev).sum(axes) / np.maximum(count, 1)
    seen = count > 0
    new_mean = np.where(seen, momentum * mean + (1 - momentum) * batch_mean, mean)
    new_var = np.where(seen, momentum * var + (1 - momentum) * batch_var, var)
    return _affine(xhat, mask, scale, bias), new_mean, new_var


def batch_renorm(x, scale, bias, mean, var, *, training, r_max=3.0, d_max=5.0, momentum=0.99,
                 epsilon=1e-5, channel_axis=-1):
    """Batch Renormalization, Ioffe (2017) Algorithm 1; returns ``(y, new_mean, new_var)``.

    The running statistics are the mean μ and the standard deviation
    σ = sqrt(var + ε); ``new_var = σ_new² − ε``.
    """
    x = _f64(x)
    c = channel_axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != c)
    scale, bias = _channel_params(x, c, (scale, bias))
    mean, var = _f64(mean), _f64(var)
    sigma = np.sqrt(var + epsilon)
    if not training:
        xhat = (x - _place(mean, x.ndim, (c,))) / _place(sigma, x.ndim, (c,))
        return _affine(xhat, np.ones(x.shape, bool), scale, bias), mean, var
    mu_b = x.mean(axes)
    sigma_b = np.sqrt(((x - _place(mu_b, x.ndim, (c,))) ** 2).mean(axes) + epsilon)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - mean) / sigma, -d_max, d_max)
    xhat = (x - _place(mu_b, x.ndim, (c,))) / _place(sigma_b, x.ndim, (c,))
    xhat = xhat * _place(r, x.ndim, (c,)) + _place(d, x.ndim, (c,))
    new_mean = mean + (1 - momentum) * (mu_b - mean)
    new_sigma = sigma + (1 - momentum) * (sigma_b - sigma)
    return _affine(xhat, np.ones(x.shape, bool), scale, bias), new_mean, new_sigma**2 - epsilon


def representative_batch_norm(x, scale, bias, mean, var, *, center_weight, scale_weight, scale_bias,
                              training, momentum=0.99, epsilon=1e-5, channel_axis=-1):
    """Representative BatchNorm (Gao et al. 2021), Flax convention, axis 0 the batch.

    ``x' = x + w_m·K(x)``, ``x̂ = BN(x')``, ``y = scale·sigmoid(w_v·K(x̂) + b_v)·x̂ + bias``
    with ``K`` the per-example mean over the spatial axes. Returns
    ``(y, new_mean, new_var)``.
    """
    x = _f64(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    w_m, w_v, b_v = (_place(_f64(p), x.ndim, (c,)) for p in (center_weight, scale_weight, scale_bias))

    def k(t):
        return t.mean(spatial, keepdims=True) if spatial else t

    calibrated = x + w_m * k(x)
    xhat, new_mean, new_var = batch_norm(calibrated, None, None, mean, var, training=training,
                                         momentum=momentum, epsilon=epsilon, channel_axis=c)
    factor = 1 / (1 + np.exp(-(w_v * k(xhat) + b_v)))
    scale, bias = _channel_params(x, c, (scale, bias))
    return _affine(xhat * factor, np.ones(x.shape, bool), scale, bias), new_mean, new_var


def _two_pass(x, axes):
    """Mean and biased variance over axes (keepdims), two passes, float64."""
    mean = x.mean(axes, keepdims=True) if axes else x
    dev = x - mean
    return mean, (dev * dev).mean(axes, keepdims=True) if axes else np.zeros_like(x)


def _matrix(w, feature_axis):
    return np.moveaxis(w, feature_axis, 0).reshape(w.shape[feature_axis], -1)


def weight_norm(v, g, *, feature_axis=-1, exponential=False):
    """``w = g·v/‖v‖``, norm over every axis but ``feature_axis`` (None: all)."""
    v, g = _f64(v), _f64(g)
    if exponential:
        g = np.exp(g)
    if feature_axis is None:
        return g * v / np.sqrt((v * v).sum())
    f = feature_axis % v.ndim
    others = tuple(a for a in range(v.ndim) if a != f)
    norm = np.sqrt((v * v).sum(others, keepdims=True))
    return _place(g, v.ndim, (f,)) * v / norm


def spectral_norm(w, u, *, n_iterations=1, epsilon=1e-12, feature_axis=-1):
    """Miyato et al. (2018) Algorithm 1 from ``u``; returns ``(w/σ, new_u)``."""
    w, u = _f64(w), _f64(u)
    mat = _matrix(w, feature_axis % w.ndim)

    def unit(t):
        return t / max(np.linalg.norm(t), epsilon)

    for _ in range(n_iterations):
        v = unit(mat.T @ u)
        u = unit(mat @ v)
    return w / (u @ mat @ v), u


def weight_standardize(w, *, feature_axis=-1, epsilon=1e-5):
    """Qiao et al. (2019) eq. 5: ``(w − μ)/sqrt(σ² + ε)`` per output feature."""
    w = _f64(w)
    f = feature_axis % w.ndim
    mean, var = _two_pass(w, tuple(a for a in range(w.ndim) if a != f))
    return (w - mean) / np.sqrt(var + epsilon)


def local_response_norm(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0, channel_axis=-1):
    """PyTorch's LRN: ``x / (k + α/size·Σ_window x²)^β`` across channels."""
    x = np.moveaxis(_f64(x), channel_axis, 0)
    channels = x.shape[0]
    energy = np.zeros_like(x)
    for c in range(channels):
        lo, hi = max(c - size // 2, 0), min(c + (size - 1) // 2, channels - 1)
        energy[c] = (x[lo : hi + 1] ** 2).sum(0)
    return np.moveaxis(x / (k + alpha / size * energy) ** beta, 0, channel_axis)


def filter_response_norm(x, scale=None, bias=None, tau=None, *, channel_axis=-1, epsilon=1e-6):
    """Singh & Krishnan (2020): ``max(γ·x/sqrt(mean(x²) + ε) + β, τ)``, spatial mean."""
    x = _f64(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    nu2 = (x * x).mean(spatial, keepdims=True) if spatial else x * x
    scale, bias, tau = _channel_params(x, c, (scale, bias, tau))
    y = _affine(x / np.sqrt(nu2 + epsilon), np.ones(x.shape, bool), scale, bias)
    return y if tau is None else np.maximum(y, tau)


def evonorm_s0(x, scale=None, bias=None, v=None, *, num_groups=32, channel_axis=-1, epsilon=1e-5):
    """Liu et al. (2020) EvoNorm-S0: ``x·sigmoid(v·x)/sqrt(σ²_group + ε)·γ + β``."""
    x = _f64(x)
    c = channel_axis % x.ndim
    moved = np.moveaxis(x, c, -1)
    grouped = moved.reshape(moved.shape[:-1] + (num_groups, -1))
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    _, var = _two_pass(grouped, axes)
    std = np.moveaxis(np.sqrt(np.broadcast_to(var + epsilon, grouped.shape).reshape(moved.shape)), -1, c)
    scale, bias, v = _channel_params(x, c, (scale, bias, v))
    v = 1.0 if v is None else v
    sigmoid = 0.5 * (1 + np.tanh(0.5 * v * x))  # 1/(1 + e^(−vx)) without overflow
    return _affine(x * sigmoid / std, np.ones(x.shape, bool), scale, bias)


def evonorm_b0(x, scale, bias, v, mean, var, *, training, momentum=0.99, epsilon=1e-5, channel_axis=-1):
    """Liu et al. (2020) EvoNorm-B0, Flax convention; returns ``(y, new_mean, new_var)``.

    ``y = x / max(sqrt(σ²_batch + ε), v·x + sqrt(σ²_instance + ε))·γ + β``.
    """
    x = _f64(x)
    c = channel_axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != c)
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    mean, var = _f64(mean), _f64(var)
    if training:
        batch_mean, batch_var = (t.reshape(-1) for t in _two_pass(x, axes))
        new_mean = momentum * mean + (1 - momentum) * batch_mean
        new_var = momentum * var + (1 - momentum) * batch_var
    else:
        batch_var, new_mean, new_var = var, mean, var
    scale, bias, v = _channel_params(x, c, (scale, bias, v))
    v = 1.0 if v is None else v
    _, instance_var = _two_pass(x, spatial)
    den = np.maximum(np.sqrt(_place(batch_var, x.ndim, (c,)) + epsilon), v * x + np.sqrt(instance_var + epsilon))
    return _affine(x / den, np.ones(x.shape, bool), scale, bias), new_mean, new_var


def switchable_norm(x, scale, bias, mean, var, *, training, mean_logits=None, var_logits=None,
                    momentum=0.99, epsilon=1e-5, channel_axis=-1):
    """Luo et al. (2019) Switchable Normalization, Flax convention.

    Softmax mixtures over (instance, layer, batch) of the means and the
    biased variances; returns ``(y, new_mean, new_var)``.
    """
    x = _f64(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    everything = tuple(a for a in range(x.ndim) if a != c)
    mean, var = _f64(mean), _f64(var)
    stats = [_two_pass(x, spatial), _two_pass(x, tuple(range(1, x.ndim)))]
    if training:
        batch_mean, batch_var = _two_pass(x, everything)
        stats.append((batch_mean, batch_var))
        new_mean = momentum * mean + (1 - momentum) * batch_mean.reshape(-1)
        new_var = momentum * var + (1 - momentum) * batch_var.reshape(-1)
    else:
        stats.append((_place(mean, x.ndim, (c,)), _place(var, x.ndim, (c,))))
        new_mean, new_var = mean, var

    def softmax(logits):
        e = np.exp(np.zeros(3) if logits is None else _f64(logits))
        return e / e.sum()

    w_mean, w_var = softmax(mean_logits), softmax(var_logits)
    mu = sum(w * m for w, (m, _) in zip(w_mean, stats))
    sigma2 = sum(w * s for w, (_, s) in zip(w_var, stats))
    scale, bias = _channel_params(x, c, (scale, bias))
    return _affine((x - mu) / np.sqrt(sigma2 + epsilon), np.ones(x.shape, bool), scale, bias), new_mean, new_var
