"""Errors of the weight-side and newer schemes against their independent oracles.

PyTorch CPU (float64) for weight norm, spectral norm and LRN, outputs and
gradients; the float64 NumPy references of ``jaxnorm.reference`` for the
rest; numpy.linalg.svd for spectral norm's σ after 200 iterations; and
float32 inputs at a mean of 1e4 against float64 on the same values.

    python benchmarks/studies/scheme_oracles.py [--out benchmarks/results/scheme_oracles.json]
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jaxnorm import reference as ref  # noqa: E402
import jaxnorm as jn  # noqa: E402
from jaxnorm.bench.table import write_json  # noqa: E402

RNG = np.random.default_rng(0)


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def weight_norm_vs_torch() -> dict:
    """nn.Conv2d with parametrizations.weight_norm (dim=0) vs weight_norm(feature_axis=0)."""
    conv = torch.nn.Conv2d(8, 16, 3).double()
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
    g = torch.tensor(RNG.standard_normal((16, 1, 1, 1)), requires_grad=True)
    v = torch.tensor(RNG.standard_normal((16, 8, 3, 3)), requires_grad=True)
    cot = RNG.standard_normal((16, 8, 3, 3))
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
        conv.parametrizations.weight.original1.copy_(v)
    w_torch = conv.weight
    (w_torch * torch.tensor(cot)).sum().backward()
    params = conv.parametrizations.weight
    gv, gg = params.original1.grad.numpy(), params.original0.grad.numpy().reshape(16)

    def loss(v_, g_):
        return jnp.sum(jn.weight_norm(v_, g_, feature_axis=0) * cot)

    w = jn.weight_norm(v.detach().numpy(), g.detach().numpy().reshape(16), feature_axis=0)
    dv, dg = jax.grad(loss, argnums=(0, 1))(v.detach().numpy(), g.detach().numpy().reshape(16))
    return {"weight": _max_abs(w, w_torch.detach().numpy()), "grad_v": _max_abs(dv, gv), "grad_g": _max_abs(dg, gg)}


def spectral_norm_vs_torch(n_iterations: int = 3) -> dict:
    """nn.Linear with the paper's (legacy) torch.nn.utils.spectral_norm, same u."""
    lin = torch.nn.utils.spectral_norm(torch.nn.Linear(24, 10).double(), n_power_iterations=n_iterations)
    u0 = lin.weight_u.detach().numpy().copy()
    w0 = lin.weight_orig.detach().numpy().copy()
    cot = RNG.standard_normal((10, 24))
    lin.train()
    (lin(torch.eye(24, dtype=torch.float64)).T * torch.tensor(cot)).sum().backward()
    w_torch = lin.weight.detach().numpy()
    grad_torch = lin.weight_orig.grad.numpy()

    def normalized(w):
        return jn.spectral_norm(w, u0, n_iterations=n_iterations, feature_axis=0)

    w, u = normalized(w0)
    grad = jax.grad(lambda w: jnp.sum(normalized(w)[0] * cot))(w0)
    return {
        "weight": _max_abs(w, w_torch),
        "new_u": _max_abs(u, lin.weight_u.detach().numpy()),
        "grad": _max_abs(grad, grad_torch),
    }


def spectral_sigma_vs_svd(dtype) -> float:
    """Relative error of σ after 200 iterations against the top singular value."""
    w = RNG.standard_normal((3, 3, 32, 64)).astype(dtype)
    u = jn.spectral_norm_init(jax.random.key(0), w, n_iterations=0)
    w_sn, _ = jn.spectral_norm(w, u, n_iterations=200)
    sigma = float(np.mean(np.asarray(w, np.float64) / np.asarray(w_sn, np.float64)))
    top = np.linalg.svd(np.moveaxis(np.asarray(w, np.float64), -1, 0).reshape(64, -1), compute_uv=False)[0]
    return abs(sigma - top) / top


def lrn_vs_torch() -> dict:
    x = RNG.standard_normal((4, 12, 5, 5))
    cot = RNG.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, 5, alpha=0.3, beta=0.75, k=2.0)
    (yt * torch.tensor(cot)).sum().backward()

    def f(x_):
        return jn.local_response_norm(x_, size=5, alpha=0.3, beta=0.75, k=2.0, channel_axis=1)

    grad = jax.grad(lambda x_: jnp.sum(f(x_) * cot))(x)
    return {"output": _max_abs(f(x), yt.detach().numpy()), "grad": _max_abs(grad, xt.grad.numpy())}


def references() -> dict:
    """Float64 max error and float32 relative error at mean 1e4, vs jaxnorm.reference."""
    c = 16
    s, b, p = (RNG.standard_normal(c) for _ in range(3))
    stats = jn.BatchStats.init(c, jnp.float64)
    logits = {"mean_logits": np.array([0.3, -0.2, 0.5]), "var_logits": np.array([-1.0, 0.4, 0.2])}
    pairs = {
        "weight_standardize": (lambda w: jn.weight_standardize(w), lambda w: ref.weight_standardize(w), "kernel"),
        "filter_response_norm": (
            lambda x: jn.filter_response_norm(x, s, b, p), lambda x: ref.filter_response_norm(x, s, b, p), "x"),
        "evonorm_s0": (
            lambda x: jn.evonorm_s0(x, s, b, p, num_groups=4),
            lambda x: ref.evonorm_s0(x, s, b, p, num_groups=4), "x"),
        "evonorm_b0": (
            lambda x: jn.evonorm_b0(x, s, b, p, stats, training=True)[0],
            lambda x: ref.evonorm_b0(x, s, b, p, stats.mean, stats.var, training=True)[0], "x"),
        "switchable_norm": (
            lambda x: jn.switchable_norm(x, s, b, stats, training=True, **logits)[0],
            lambda x: ref.switchable_norm(x, s, b, stats.mean, stats.var, training=True, **logits)[0], "x"),
    }
    inputs = {"x": RNG.standard_normal((8, 6, 6, c)), "kernel": RNG.standard_normal((3, 3, 8, c))}
    out = {}
    for name, (f, oracle, kind) in pairs.items():
        x = inputs[kind]
        shifted = (x + 1e4).astype(np.float32)
        out[name] = {"float64_max_abs": _max_abs(f(x), oracle(x)), "float32_mean_1e4_rel": _rel_l2(f(shifted), oracle(shifted))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scheme_oracles.json")
    args = parser.parse_args(argv)
    results = {
        "weight_norm_vs_torch_parametrizations": weight_norm_vs_torch(),
        "spectral_norm_vs_torch_legacy": spectral_norm_vs_torch(),
        "spectral_sigma_vs_svd_rel": {"float32": spectral_sigma_vs_svd(np.float32), "float64": spectral_sigma_vs_svd(np.float64)},
        "local_response_norm_vs_torch": lrn_vs_torch(),
        "vs_float64_reference": references(),
    }
    for name, value in results.items():
        print(name)
        for key, number in value.items():
            if isinstance(number, dict):
                print(f"  {key:22s} " + "  ".join(f"{k} {v:.1e}" for k, v in number.items()))
            else:
                print(f"  {key:22s} {number:.1e}")
    write_json(args.out, [], command="python benchmarks/studies/scheme_oracles.py " + " ".join(sys.argv[1:]), results=results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
