"""Float64 NumPy oracles of the fuzz suite, with the error model of each output.

Written from the papers' formulas for the fuzz suite, independently of
jaxnorm's implementation (and of ``jaxnorm.reference``, which
``test_fuzz_functions.py`` cross-checks them against). Every function takes
float64 arrays and returns a :class:`Ref`:

* ``out``: the outputs (y, and the new running statistics where there are).
* ``mag``: for each output, an array of the same shape bounding the
  magnitude of the quantities the output is computed from, already
  multiplied by the conditioning ``κ`` of the statistics (see below). The
  suite's tolerance is ``2·γ_n·u_c·mag + u_out·|out| + tiny``.
* ``n``: the largest number of entries summed into one statistic (``γ_n``).
* ``x_scale``: the natural scale of ``x`` (broadcastable to it): the
  normalizing σ of each entry's set. Tangents are drawn in these units, and
  the gradient tolerance is expressed with them.
* ``frozen``: quantities that carry no gradient (``stop_gradient`` in the
  formula: Batch Renorm's r and d, spectral norm's u and v, the branch a max
  takes), so that finite differences of the oracle hold them fixed.

Exactness of the oracle itself. Statistics are formed about an anchor, one
unmasked entry of each set (``_Set``): for float16/bfloat16/float32 data the
differences ``x − anchor`` are exact in float64, and for float64 data they are
exact whenever they cancel (Sterbenz). So the oracle's error is a few float64
units times the same magnitudes as jaxnorm's, never ``|mean|/σ`` as with a
mean computed first: it needs no term of its own in the tolerance at any mean.

Conditioning. One-pass shifted moments lose ``(1 + R²)`` units where ``R`` is
the largest ``|x − μ|/σ`` of the set (the shift lies inside the set, so it is
at most ``R·σ`` from the mean); ``κ = 1 + R²`` per set. Sums of squares
without centering (RMSNorm, FRN, LRN, weight norm) cancel nothing: ``κ = 1``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

F64 = np.float64


@dataclasses.dataclass
class Ref:
    out: tuple
    mag: tuple
    n: int
    x_scale: object = 1.0
    frozen: dict = dataclasses.field(default_factory=dict)
    kappa: float = 1.0  # the largest conditioning factor 1 + R² of any set


def _f(a):
    return None if a is None else np.asarray(a, F64)


def _axes(axis, ndim):
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return tuple(sorted(int(a) % ndim for a in axes))


def _place(p, ndim, positions):
    """``p`` reshaped to rank ``ndim`` with its axes at ``positions`` (1 elsewhere)."""
    shape = [1] * ndim
    for size, pos in zip(p.shape, positions):
        shape[pos] = size
    return p.reshape(shape)


class _Set:
    """Statistics over ``axes`` (keepdims) of the unmasked entries of ``x``, about an anchor.

    ``anchor``: the first unmasked entry of each set (0 for an empty set);
    ``d = x − anchor`` (0 at masked entries); ``mean_d``: the mean of ``d``;
    ``c = d − mean_d`` is ``x − μ`` (0 at masked entries); ``var``: biased;
    ``count``: entries per set.
    """

    def __init__(self, x, mask, axes, center=True):
        self.axes = axes
        self.mask = np.broadcast_to(np.ones((), bool) if mask is None else mask, x.shape)
        keep = tuple(a for a in range(x.ndim) if a not in axes)
        moved = np.transpose(x, keep + axes)
        mmoved = np.transpose(self.mask, keep + axes)
        lead = moved.shape[: len(keep)]
        flat = moved.reshape(lead + (-1,))
        mflat = mmoved.reshape(lead + (-1,))
        first = np.argmax(mflat, axis=-1)[..., None]
        anchor = np.where(mflat.any(-1, keepdims=True), np.take_along_axis(np.where(mflat, flat, 0.0), first, -1), 0.0)
        kshape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
        # anchor in keepdims layout: lead axes are the kept axes in order.
        self.anchor = anchor.reshape(tuple(x.shape[a] for a in keep) + (1,) * len(axes))
        self.anchor = np.transpose(self.anchor, np.argsort(keep + axes)).reshape(kshape)
        if not center:
            self.anchor = np.zeros(kshape)
        self.count = self.mask.sum(axes, keepdims=True)
        safe = np.maximum(self.count, 1)
        self.d = np.where(self.mask, x - self.anchor, 0.0)
        self.mean_d = self.d.sum(axes, keepdims=True) / safe if center else np.zeros(kshape)
        self.c = np.where(self.mask, self.d - self.mean_d, 0.0)
        self.var = (self.c * self.c).sum(axes, keepdims=True) / safe
        self.mean = self.anchor + self.mean_d
        self.n = int(np.prod([x.shape[a] for a in axes])) if axes else 1

    def kappa(self, epsilon):
        """``1 + R²``, R the largest ``|x − μ|/σ`` of the set (σ with ε)."""
        r = np.abs(self.c).max(self.axes, keepdims=True, initial=0.0) / np.sqrt(self.var + epsilon)
        return 1.0 + r * r


def _affine(xhat, scale, bias):
    y = xhat
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def _affine_mag(xhat_mag, scale, bias):
    """``(|scale| + 1)·mag + |bias|``: the +1 keeps tangents along ``scale`` covered when it is near 0."""
    m = xhat_mag * (1.0 if scale is None else np.abs(scale) + 1.0)
    return m if bias is None else m + np.abs(bias)


def _masked(t, mask):
    return t if mask is None else np.where(np.broadcast_to(mask, t.shape), t, 0.0)


def _params_at(x, params, positions_channel, positions_example):
    """Place per-channel/normalized-shape or per-example parameters against ``x``."""
    out = []
    for p in params:
        p = _f(p)
        if p is not None:
            pos = positions_channel if p.ndim == len(positions_channel) else positions_example
            p = _place(p, x.ndim, pos)
        out.append(p)
    return out


# ---------------------------------------------------------------- per-set schemes

def normalize_over(x, scale, bias, axes, epsilon, mask, positions, positions_example, center=True):
    x = _f(x)
    s = _Set(x, mask, axes, center=center)
    if center:
        sigma = np.sqrt(s.var + epsilon)
        xhat = s.c / sigma
        kappa = s.kappa(epsilon)
    else:
        ms = np.where(s.mask, x * x, 0.0).sum(axes, keepdims=True) / np.maximum(s.count, 1)
        sigma = np.sqrt(ms + epsilon)
        xhat = np.where(s.mask, x, 0.0) / sigma
        kappa = 1.0
    scale, bias = _params_at(x, (scale, bias), positions, positions_example)
    y = _masked(_affine(xhat, scale, bias), s.mask)
    mag = _masked(kappa * _affine_mag(1.0 + np.abs(xhat), scale, bias), s.mask)
    return Ref((y,), (mag,), s.n, x_scale=sigma, kappa=float(np.max(kappa)))


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-5, where=None):
    axes = _axes(axis, np.ndim(x))
    return normalize_over(x, scale, bias, axes, epsilon, where, axes, (0,) + axes)


def rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6, where=None):
    axes = _axes(axis, np.ndim(x))
    return normalize_over(x, scale, None, axes, epsilon, where, axes, (0,) + axes, center=False)


def _grouped(x, c, groups):
    """``x`` with channel axis ``c`` split into ``(groups, C/groups)`` at positions c, c+1."""
    shape = x.shape[:c] + (groups, x.shape[c] // groups) + x.shape[c + 1:]
    return x.reshape(shape)


def group_norm(x, scale=None, bias=None, *, num_groups, channel_axis=-1, epsilon=1e-5, where=None):
    x = _f(x)
    c = channel_axis % x.ndim
    xg = _grouped(x, c, num_groups)
    mg = None if where is None else _grouped(np.broadcast_to(where, x.shape), c, num_groups)
    axes = tuple(a for a in range(1, xg.ndim) if a != c)
    s = _Set(xg, mg, axes)
    sigma = np.sqrt(s.var + epsilon)
    xhat = (s.c / sigma).reshape(x.shape)
    kappa = np.broadcast_to(s.kappa(epsilon), xg.shape).reshape(x.shape)
    sig = np.broadcast_to(sigma, xg.shape).reshape(x.shape)
    mask = s.mask.reshape(x.shape)
    scale, bias = _params_at(x, (scale, bias), (c,), (0, c))
    y = _masked(_affine(xhat, scale, bias), mask)
    mag = _masked(kappa * _affine_mag(1.0 + np.abs(xhat), scale, bias), mask)
    return Ref((y,), (mag,), s.n, x_scale=sig, kappa=float(np.max(kappa)))


def instance_norm(x, scale=None, bias=None, *, channel_axis=-1, epsilon=1e-5, where=None):
    return group_norm(x, scale, bias, num_groups=np.shape(x)[channel_axis], channel_axis=channel_axis,
                      epsilon=epsilon, where=where)


def filter_response_norm(x, scale=None, bias=None, tau=None, *, channel_axis=-1, epsilon=1e-6, frozen=None):
    x = _f(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    nu2 = (x * x).mean(spatial, keepdims=True) if spatial else x * x
    sigma = np.sqrt(nu2 + epsilon)
    xhat = x / sigma
    scale, bias, tau = _params_at(x, (scale, bias, tau), (c,), (0, c))
    y = _affine(xhat, scale, bias)
    mag = _affine_mag(1.0 + np.abs(xhat), scale, bias)
    branch = None
    if tau is not None:
        branch = (y >= tau) if frozen is None else frozen["branch"]
        mag = mag + np.abs(tau)
        y = np.where(branch, y, tau)
    n = int(np.prod([x.shape[a] for a in spatial])) if spatial else 1
    return Ref((y,), (mag,), n, x_scale=sigma, frozen={"branch": branch, "kink": None if tau is None else (y, tau)})


def evonorm_s0(x, scale=None, bias=None, v=None, *, num_groups=32, channel_axis=-1, epsilon=1e-5):
    x = _f(x)
    c = channel_axis % x.ndim
    xg = _grouped(x, c, num_groups)
    axes = tuple(a for a in range(1, xg.ndim) if a != c)
    s = _Set(xg, None, axes)
    sigma = np.broadcast_to(np.sqrt(s.var + epsilon), xg.shape).reshape(x.shape)
    kappa = np.broadcast_to(s.kappa(epsilon), xg.shape).reshape(x.shape)
    scale, bias, v = _params_at(x, (scale, bias, v), (c,), (0, c))
    vv = 1.0 if v is None else v
    sig = 0.5 * (1 + np.tanh(0.5 * vv * x))
    num = x * sig / sigma
    y = _affine(num, scale, bias)
    # x·sigmoid(v·x): relative error of a few units whatever v·x; the +1 is the response to a
    # tangent of one natural unit (x_scale ≤ σ), which does not vanish with x.
    mag = kappa * _affine_mag(np.abs(num) + 1.0, scale, bias)
    # natural scale of x: the group σ, or the sigmoid's own scale 1/|v|, whichever is smaller.
    x_scale = np.minimum(sigma, 1.0 / np.maximum(np.abs(vv), 1e-300))
    return Ref((y,), (mag,), s.n, x_scale=x_scale, kappa=float(np.max(kappa)))


def local_response_norm(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0, channel_axis=-1):
    x = _f(x)
    c = channel_axis % x.ndim
    xm = np.moveaxis(x, c, 0)
    channels = xm.shape[0]
    energy = np.zeros_like(xm)
    for i in range(channels):
        lo, hi = max(i - size // 2, 0), min(i + (size - 1) // 2, channels - 1)
        energy[i] = (xm[lo: hi + 1] ** 2).sum(0)
    b = k + alpha / size * energy
    y = np.moveaxis(xm * b ** (-beta), 0, c)
    # b^-β through exp(-β·log b) loses |β·log b| units at most; the second term is the response to a
    # tangent of one natural unit (x_scale), which does not vanish with x.
    x_scale = np.sqrt(k * size / max(alpha, 1e-300)) if alpha > 0 else 1.0
    x_scale = min(x_scale, np.sqrt((x * x).mean()) + 1e-3)
    bm = np.moveaxis(b, 0, c)
    mag = (np.abs(y) + x_scale * bm ** (-beta)) * (1.0 + 2 * abs(beta)) * (1.0 + np.abs(np.log(bm)))
    return Ref((y,), (mag,), size, x_scale=x_scale)


# ---------------------------------------------------------------- BatchNorm family

def _running_update(old, batch, keep, weight):
    return keep * old + weight * batch


def _bn_sets(x, c, mask, virtual_batch_size):
    """The batch sets: every axis but ``c``, split into virtual batches along axis 0."""
    if virtual_batch_size is None:
        axes = tuple(a for a in range(x.ndim) if a != c)
        return x, mask, axes, lambda t: t, c
    g = x.shape[0] // virtual_batch_size
    xs = x.reshape((g, virtual_batch_size) + x.shape[1:])
    ms = None
    if mask is not None:
        m = np.broadcast_to(mask, x.shape)
        ms = m.reshape(xs.shape)
    cc = c + 1
    axes = tuple(a for a in range(1, xs.ndim) if a != cc)
    return xs, ms, axes, lambda t: t.reshape(x.shape), cc


def _channel_vector(t, cc, ndim):
    """Keepdims per-set statistics ``(sets..., C)`` → ``(sets, C)``."""
    t = np.moveaxis(t, cc, -1)
    return t.reshape(-1, t.shape[-1])


def _pool(s, cc, ndim, unbiased):
    """Per-channel batch mean, var and count from the (virtual) batch sets, count-weighted."""
    mean = _channel_vector(np.broadcast_to(s.mean, s.count.shape), cc, ndim)
    var = _channel_vector(s.var, cc, ndim)
    count = _channel_vector(s.count.astype(F64), cc, ndim)
    if unbiased:
        var = var * count / np.maximum(count - 1, 1)
    total = count.sum(0)
    safe = np.maximum(total, 1)
    # the mean pooled about the anchors, exact: Σ n_k (a_k − a_0 + m_k) / N + a_0
    anchor = _channel_vector(np.broadcast_to(s.anchor, s.count.shape), cc, ndim)
    a0 = anchor[0]
    mean_d = _channel_vector(np.broadcast_to(s.mean_d, s.count.shape), cc, ndim)
    pooled_mean = a0 + (count * ((anchor - a0) + mean_d)).sum(0) / safe
    return pooled_mean, (count * var).sum(0) / safe, total, mean


def _stats_update(mean, var, batch_mean, batch_var, count, *, convention, momentum, batches=None):
    if convention == "torch":
        if momentum is None:
            w = 1.0 / batches
            keep, weight = 1 - w, w
        else:
            keep, weight = 1 - momentum, momentum
    else:
        keep, weight = momentum, 1 - momentum
    seen = count > 0
    new_mean = np.where(seen, _running_update(mean, batch_mean, keep, weight), mean)
    new_var = np.where(seen, _running_update(var, batch_var, keep, weight), var)
    mag_mean = np.abs(keep * mean) + np.abs(weight) * (np.abs(batch_mean) + np.sqrt(batch_var))
    mag_var = np.abs(keep * var) + np.abs(weight) * batch_var
    return new_mean, new_var, mag_mean, mag_var


def _unpooled_update(mean, var, batch_mean, batch_var, n, *, convention, momentum, count):
    """``_stats_update`` for biased batch statistics over ``n`` entries per channel (torch: unbiased)."""
    if convention == "torch":
        batch_var = batch_var * n / max(n - 1, 1)
    return _stats_update(mean, var, batch_mean, batch_var, np.full(batch_var.shape, n), convention=convention,
                         momentum=momentum, batches=None if count is None else count + 1)


def batch_norm(x, scale, bias, mean, var, *, training, momentum=0.99, epsilon=1e-5, channel_axis=-1,
               where=None, virtual_batch_size=None, convention="flax", count=None):
    """Returns ``Ref`` with ``out = (y, new_mean, new_var)``; ``count`` the batches seen before (torch, None)."""
    x = _f(x)
    c = channel_axis % x.ndim
    mean, var = _f(mean), _f(var)
    scale_, bias_ = _params_at(x, (scale, bias), (c,), (0, c))
    if not training:
        sigma = np.sqrt(_place(var, x.ndim, (c,)) + epsilon)
        xhat = (x - _place(mean, x.ndim, (c,))) / sigma
        y = _masked(_affine(xhat, scale_, bias_), where)
        mag = _masked(_affine_mag(1.0 + np.abs(xhat), scale_, bias_), where)
        return Ref((y, mean, var), (mag, 0 * mean, 0 * var), 1, x_scale=sigma)
    xs, ms, axes, back, cc = _bn_sets(x, c, where, virtual_batch_size)
    s = _Set(xs, ms, axes)
    sigma = np.sqrt(s.var + epsilon)
    xhat = back(s.c / sigma)
    kappa = back(np.broadcast_to(s.kappa(epsilon), xs.shape))
    mask = back(s.mask)
    y = _masked(_affine(xhat, scale_, bias_), mask)
    mag = _masked(kappa * _affine_mag(1.0 + np.abs(xhat), scale_, bias_), mask)
    bm, bv, total, _ = _pool(s, cc, xs.ndim, unbiased=convention == "torch")
    batches = None if count is None else count + 1
    nm, nv, mm, mv = _stats_update(mean, var, bm, bv, total, convention=convention, momentum=momentum,
                                   batches=batches)
    kmax = float(np.max(s.kappa(epsilon)))
    return Ref((y, nm, nv), (mag, mm, kmax * mv), s.n, x_scale=back(np.broadcast_to(sigma, xs.shape)), kappa=kmax)


def batch_renorm(x, scale, bias, mean, var, *, training, r_max=3.0, d_max=5.0, momentum=0.99, epsilon=1e-5,
                 channel_axis=-1, where=None, frozen=None):
    x = _f(x)
    c = channel_axis % x.ndim
    mean, var = _f(mean), _f(var)
    if not training:
        return batch_norm(x, scale, bias, mean, var, training=False, epsilon=epsilon, channel_axis=c, where=where)
    scale_, bias_ = _params_at(x, (scale, bias), (c,), (0, c))
    axes = tuple(a for a in range(x.ndim) if a != c)
    s = _Set(x, where, axes)
    sigma_b = np.sqrt(s.var + epsilon)
    run_mean, sigma = _place(mean, x.ndim, (c,)), np.sqrt(_place(var, x.ndim, (c,)) + epsilon)
    if frozen is None:
        r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
        d = np.clip(((s.anchor - run_mean) + s.mean_d) / sigma, -d_max, d_max)
        frozen = {"r": r, "d": d}
    r, d = frozen["r"], frozen["d"]
    xhat = s.c / sigma_b
    y = _masked(_affine(xhat * r + d, scale_, bias_), s.mask)
    kappa = s.kappa(epsilon)
    mag = _masked(kappa * _affine_mag(1.0 + np.abs(xhat * r) + np.abs(d), scale_, bias_), s.mask)
    count = s.count.reshape(-1)
    bm, sb = s.mean.reshape(-1), sigma_b.reshape(-1)
    old_sigma = np.sqrt(var + epsilon)
    seen = count > 0
    new_mean = np.where(seen, momentum * mean + (1 - momentum) * bm, mean)
    new_sigma = momentum * old_sigma + (1 - momentum) * sb
    new_var = np.where(seen, np.maximum(new_sigma**2 - epsilon, 0), var)
    mm = np.abs(momentum * mean) + (1 - momentum) * (np.abs(bm) + sb)
    mv = 2 * new_sigma * (momentum * old_sigma + (1 - momentum) * sb) * kappa.max() + epsilon
    return Ref((y, new_mean, new_var), (mag, mm, mv), s.n, x_scale=sigma_b, frozen=frozen,
               kappa=float(np.max(kappa)))


def representative_batch_norm(x, scale, bias, mean, var, *, center_weight, scale_weight, scale_bias,
                              training, momentum=0.99, epsilon=1e-5, channel_axis=-1, convention="flax", count=None):
    """Gao et al. 2021 with axis 0 the batch: x' = x + w_m·K(x), x̂ = BN(x'), y = γ·σ(w_v·K(x̂) + b_v)·x̂ + β."""
    x = _f(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    w_m, w_v, b_v = (_place(_f(p), x.ndim, (c,)) for p in (center_weight, scale_weight, scale_bias))
    everything = tuple(a for a in range(x.ndim) if a != c)
    # x' relative to one sample per channel a: x' − (1 + w_m)·a = (x − a) + w_m·K(x − a), exact.
    anchor = _Set(x, None, everything).anchor
    dx = x - anchor

    def k(t):
        return t.mean(spatial, keepdims=True) if spatial else t

    dprime = dx + w_m * k(dx)
    mean, var = _f(mean), _f(var)
    if training:
        s = _Set(dprime, None, everything)
        sigma = np.sqrt(s.var + epsilon)
        xhat = s.c / sigma
        kappa = s.kappa(epsilon) * (1 + np.abs(w_m))
        bm = ((1 + w_m) * anchor + s.mean).reshape(-1)
        nm, nv, mm, mv = _unpooled_update(mean, var, bm, s.var.reshape(-1), s.n, convention=convention,
                                          momentum=momentum, count=count)
        mv = mv * float(kappa.max())
        n = s.n
    else:
        run_mean = _place(mean, x.ndim, (c,)) - (1 + w_m) * anchor
        sigma = np.sqrt(_place(var, x.ndim, (c,)) + epsilon)
        xhat = (dprime - run_mean) / sigma
        kappa = 1 + np.abs(w_m)
        nm, nv, mm, mv = mean, var, 0 * mean, 0 * var
        n = int(np.prod([x.shape[a] for a in spatial])) if spatial else 1
    z = w_v * k(xhat) + b_v
    factor = 0.5 * (1 + np.tanh(0.5 * z))  # sigmoid without overflow
    scale_, bias_ = _params_at(x, (scale, bias), (c,), (0, c))
    y = _affine(xhat * factor, scale_, bias_)
    mag = kappa * _affine_mag((1.0 + np.abs(xhat)) * (1 + np.abs(w_v) * (1 + np.abs(k(xhat)))), scale_, bias_)
    return Ref((y, nm, nv), (mag, mm, mv), n, x_scale=sigma, kappa=float(np.max(kappa)))


def _softmax(logits):
    z = np.zeros(3) if logits is None else _f(logits)
    e = np.exp(z - z.max())
    return e / e.sum()


def switchable_norm(x, scale, bias, mean, var, *, training, mean_logits=None, var_logits=None, momentum=0.99,
                    epsilon=1e-5, channel_axis=-1, convention="flax", count=None):
    """Luo et al. 2019: softmax mixtures of IN, LN, BN means and biased variances (axis 0 the batch)."""
    x = _f(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    per_example = tuple(range(1, x.ndim))
    everything = tuple(a for a in range(x.ndim) if a != c)
    sets = [_Set(x, None, spatial), _Set(x, None, per_example)]
    mean, var = _f(mean), _f(var)
    bn = None
    if training:
        bn = _Set(x, None, everything)
        sets.append(bn)
        nm, nv, mm, mv = _unpooled_update(mean, var, bn.mean.reshape(-1), bn.var.reshape(-1), bn.n,
                                          convention=convention, momentum=momentum, count=count)
        mv = mv * float(np.max(bn.kappa(epsilon)))
    else:
        nm, nv, mm, mv = mean, var, 0 * mean, 0 * var
    w_mean, w_var = _softmax(mean_logits), _softmax(var_logits)
    # x − μ = (x − a_IN) − Σ_k w_k (a_k − a_IN + m_k), all differences of data values exact.
    a_in = sets[0].anchor
    centered = x - a_in
    offs = [(s.anchor - a_in) + s.mean_d for s in sets]
    vars_ = [s.var for s in sets]
    if not training:
        offs.append(_place(mean, x.ndim, (c,)) - a_in)
        vars_.append(_place(var, x.ndim, (c,)))
    xc = centered - sum(w * o for w, o in zip(w_mean, offs))
    sigma2 = sum(w * v for w, v in zip(w_var, vars_))
    sigma = np.sqrt(sigma2 + epsilon)
    xhat = xc / sigma
    scale_, bias_ = _params_at(x, (scale, bias), (c,), (0, c))
    y = _affine(xhat, scale_, bias_)
    # each source's R: |x − μ_k|/σ; the mixture's κ bounds them all.
    r = np.maximum.reduce([np.abs(x - a_in - o) for o in offs]) / sigma
    kappa = 1 + r.max() ** 2
    mag = kappa * _affine_mag(1.0 + np.abs(xhat), scale_, bias_)
    n = int(np.prod([x.shape[a] for a in everything]))
    return Ref((y, nm, nv), (mag, mm, mv), n, x_scale=sigma, kappa=float(kappa))


def evonorm_b0(x, scale, bias, v, mean, var, *, training, momentum=0.99, epsilon=1e-5, channel_axis=-1,
               convention="flax", frozen=None, count=None):
    """Liu et al. 2020: y = x / max(sqrt(σ²_B + ε), v·x + sqrt(σ²_I + ε))·γ + β."""
    x = _f(x)
    c = channel_axis % x.ndim
    spatial = tuple(a for a in range(1, x.ndim) if a != c)
    everything = tuple(a for a in range(x.ndim) if a != c)
    mean, var = _f(mean), _f(var)
    inst = _Set(x, None, spatial)
    if training:
        bn = _Set(x, None, everything)
        batch_var = bn.var
        nm, nv, mm, mv = _unpooled_update(mean, var, bn.mean.reshape(-1), bn.var.reshape(-1), bn.n,
                                          convention=convention, momentum=momentum, count=count)
        kb = bn.kappa(epsilon)
        mv = mv * float(np.max(kb))
        n = bn.n
    else:
        batch_var = _place(var, x.ndim, (c,))
        nm, nv, mm, mv = mean, var, 0 * mean, 0 * var
        kb = 1.0
        n = int(np.prod([x.shape[a] for a in spatial])) if spatial else 1
    scale_, bias_, v_ = _params_at(x, (scale, bias, v), (c,), (0, c))
    vv = 1.0 if v_ is None else v_
    left = np.sqrt(batch_var + epsilon)
    si = np.sqrt(inst.var + epsilon)
    right = vv * x + si
    branch = (left >= right) if frozen is None else frozen["branch"]
    den = np.where(branch, left, right)
    q = x / den
    y = _affine(q, scale_, bias_)
    cond = np.maximum(kb, inst.kappa(epsilon)) * (1 + (np.abs(vv * x) + si) / den)
    x_scale = np.minimum(left, si)
    # |q| and the response to a tangent of one natural unit: t/den and x·v·t/den².
    mag = cond * _affine_mag(np.abs(q) + (x_scale / den) * (1 + np.abs(vv) * np.abs(x) / den + np.abs(q)),
                             scale_, bias_)
    return Ref((y, nm, nv), (mag, mm, mv), max(n, 1), x_scale=x_scale,
               frozen={"branch": branch, "kink": (left, right)}, kappa=float(np.max(cond)))


# ---------------------------------------------------------------- weight schemes

def weight_norm(v, g, *, feature_axis=-1, exponential=False, frozen=None):
    """``w = g·v/‖v‖``; a zero slice gives 0 with zero derivative (``frozen['zero']`` keeps it so)."""
    v, g = _f(v), _f(g)
    gg = np.exp(g) if exponential else g
    if feature_axis is None:
        norm = np.sqrt((v * v).sum())
        n = v.size
        gp, graw = gg, np.abs(g)
    else:
        f = feature_axis % v.ndim
        others = tuple(a for a in range(v.ndim) if a != f)
        norm = np.sqrt((v * v).sum(others, keepdims=True))
        n = int(np.prod([v.shape[a] for a in others]))
        gp, graw = _place(gg, v.ndim, (f,)), np.abs(_place(g, v.ndim, (f,)))
    zero = (norm == 0) if frozen is None else frozen["zero"]
    safe = np.where(zero, 1.0, norm)
    w = np.where(zero, 0.0, gp * v / safe)
    # exp(g) loses |g| units (its argument's rounding, amplified); 1/√n is the response to a tangent
    # of one natural unit (‖v‖/√n).
    mag = (np.abs(gp) + 1.0) * (np.abs(v) / safe + 1.0 / math.sqrt(n)) * (1.0 + (graw if exponential else 0.0))
    return Ref((w,), (mag,), n, x_scale=np.broadcast_to(safe / math.sqrt(n), v.shape), frozen={"zero": zero})


def weight_standardize(w, *, feature_axis=-1, epsilon=1e-5):
    w = _f(w)
    f = feature_axis % w.ndim
    axes = tuple(a for a in range(w.ndim) if a != f)
    return normalize_over(w, None, None, axes, epsilon, None, axes, axes)


def _unit(t, epsilon):
    n = np.sqrt((t * t).sum())
    den = max(n, epsilon)
    return t / den if den > 0 else t * 0.0


def spectral_norm(w, u, *, n_iterations=1, epsilon=1e-12, feature_axis=-1, frozen=None):
    """Miyato et al. 2018 Algorithm 1; ``out = (w/σ, new_u, σ)``; u and v carry no gradient."""
    w, u = _f(w), _f(u)
    f = feature_axis % w.ndim
    mat = np.moveaxis(w, f, 0).reshape(w.shape[f], -1)
    amat = np.abs(mat)
    cond = 1.0
    if frozen is None:
        uu = u
        for _ in range(n_iterations):
            t = mat.T @ uu
            cond *= (np.linalg.norm(amat.T @ np.abs(uu)) + 1e-300) / (np.linalg.norm(t) + 1e-300)
            vv = _unit(t, epsilon)
            t = mat @ vv
            cond *= (np.linalg.norm(amat @ np.abs(vv)) + 1e-300) / (np.linalg.norm(t) + 1e-300)
            # a step whose W·v is exactly 0 (a zero kernel) keeps u (jaxnorm's documented choice)
            uu = _unit(t, epsilon) if np.any(t != 0) else uu
        frozen = {"u": uu, "v": vv, "cond": cond}
    uu, vv, cond = frozen["u"], frozen["v"], frozen["cond"]
    sigma = uu @ mat @ vv
    s_mag = (np.abs(uu) @ amat @ np.abs(vv)) * cond
    rms = np.sqrt((w * w).mean()) + 1e-300
    if sigma == 0:  # a zero kernel: σ reads 1, w/σ is w itself
        y, mag, sigma = w, np.abs(w) + rms, 1.0
    else:
        y = w / sigma
        # |y| and the response to a tangent of one natural unit (rms(w)): rms/σ, twice.
        mag = (np.abs(y) + 2 * rms / abs(sigma)) * (1 + s_mag / abs(sigma))
    return Ref((y, uu, np.asarray(sigma)), (mag, cond * (np.abs(uu) + 1e-300), np.asarray(s_mag)),
               int(mat.size), x_scale=rms, frozen=frozen)


def fold_batch_norm(kernel, bias, mean, var, scale=None, bn_bias=None, *, epsilon=1e-5):
    kernel = _f(kernel)
    mean, var = _f(mean), _f(var)
    a = 1 / np.sqrt(var + epsilon)
    if scale is not None:
        a = a * _f(scale)
    k2 = kernel * a
    b0 = np.zeros_like(mean) if bias is None else _f(bias)
    b2 = (b0 - mean) * a
    if bn_bias is not None:
        b2 = b2 + _f(bn_bias)
    # Magnitudes with the tangents' scales in them (a kernel tangent is |kernel| + 1 units, a scale
    # tangent |scale| + 1): kernel' = kernel·scale/σ moves by (|kernel| + 1)(|scale| + 1)/σ.
    sigma = np.sqrt(var + epsilon)
    s1 = (1.0 if scale is None else np.abs(_f(scale)) + 1.0) / sigma
    mag_k = 2 * (np.abs(kernel) + 1.0) * s1
    mag_b = 2 * (np.abs(b0 - mean) + np.abs(b0) + 1.0) * s1 + (0 if bn_bias is None else np.abs(_f(bn_bias)) + 1.0)
    return Ref((k2, b2), (mag_k, mag_b), 1, x_scale=np.abs(kernel) + 1.0)


def batch_renorm_schedule(step, *, r_max=3.0, d_max=5.0, warmup_steps=5000, r_max_steps=40000,
                          d_max_steps=25000):
    def ramp(end, final, start):
        t = np.clip((step - warmup_steps) / (end - warmup_steps), 0.0, 1.0)
        return start + t * (final - start)

    r, d = ramp(r_max_steps, r_max, 1.0), ramp(d_max_steps, d_max, 0.0)
    return Ref((np.asarray(r), np.asarray(d)), (np.asarray(r) * 4 + abs(step) * 1e-7 * r_max,
                                                  np.asarray(d) * 4 + abs(step) * 1e-7 * d_max), 1)
