"""Relative error of each implementation at large means (float32 input, unit spread).

For means 0, 1, 1.9, 1e2, 1e4, 1e6: the relative L2 error, against a float64
reference computed on the same float32 inputs, of jaxnorm's CPU program and
of its accelerator program (what XLA:GPU and XLA:TPU compile, run here with
``JAXNORM_CPU_LOWERING=accelerator``), flax.linen with its default
(``use_fast_variance=True``) and with ``use_fast_variance=False``, and
PyTorch CPU's functional op when torch is installed. A second table gives,
for five distributions (Gaussian, uniform, post-ReLU, bimodal, Student-t
with 3 degrees of freedom), jaxnorm's worst error over those means, output
and input gradient, in both programs. Writes JSON.

    python benchmarks/exactness.py [--out benchmarks/results/exactness_cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import jax
import numpy as np

from jaxnorm import reference
import jaxnorm as jn
from jaxnorm.bench.table import write_json

# 1 and 1.9 lie inside jaxnorm's well-conditioned range (mean² <= 4·var: the
# textbook moments), 1e2 and up outside it (the shifted moments).
MEANS = [0.0, 1.0, 1.9, 1e2, 1e4, 1e6]
SHAPE = (8, 16, 16, 64)  # N, H, W, C
GROUPS = 8


def _flax(name, fast, **kw):
    import flax.linen as nn

    module = getattr(nn, name)(use_fast_variance=fast, use_bias=False, use_scale=False, **kw)
    return jax.jit(lambda x: module.apply({}, x))


JAXNORM = {
    "layer_norm": lambda x: jn.layer_norm(x),
    "group_norm": lambda x: jn.group_norm(x, num_groups=GROUPS),
    "instance_norm": lambda x: jn.instance_norm(x),
}
PROGRAMS = {"jaxnorm": "", "jaxnorm (accelerator program)": "accelerator"}


def traced_for(program: str, fn):
    """``jax.jit(fn)`` traced (on its first call) with ``JAXNORM_CPU_LOWERING=program``."""
    jitted = jax.jit(lambda *a: fn(*a))

    def run(*args):
        old = os.environ.get("JAXNORM_CPU_LOWERING")
        os.environ["JAXNORM_CPU_LOWERING"] = program
        try:
            return jitted(*args)
        finally:
            if old is None:
                del os.environ["JAXNORM_CPU_LOWERING"]
            else:
                os.environ["JAXNORM_CPU_LOWERING"] = old

    return run


def implementations():
    """scheme -> {implementation name -> f(x: float32 ndarray) -> ndarray}."""
    impls = {scheme: {name: traced_for(program, f) for name, program in PROGRAMS.items()}
             for scheme, f in JAXNORM.items()}
    if importlib.util.find_spec("flax") is not None:
        for fast in (True, False):
            tag = "flax.linen" + ("" if fast else " (use_fast_variance=False)")
            impls["layer_norm"][tag] = _flax("LayerNorm", fast, epsilon=1e-5)
            impls["group_norm"][tag] = _flax("GroupNorm", fast, num_groups=GROUPS, epsilon=1e-5)
            impls["instance_norm"][tag] = _flax("InstanceNorm", fast, epsilon=1e-5)
    if importlib.util.find_spec("torch") is not None:
        import torch
        import torch.nn.functional as F

        def nchw(f):
            def run(x):
                t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
                return np.moveaxis(f(t).numpy(), 1, -1)
            return run

        impls["layer_norm"]["torch"] = lambda x: F.layer_norm(torch.from_numpy(x), x.shape[-1:], eps=1e-5).numpy()
        impls["group_norm"]["torch"] = nchw(lambda t: F.group_norm(t, GROUPS, eps=1e-5))
        impls["instance_norm"]["torch"] = nchw(lambda t: F.instance_norm(t, eps=1e-5))
    return impls


REFERENCES = {
    "layer_norm": lambda x: reference.layer_norm(x),
    "group_norm": lambda x: reference.group_norm(x, num_groups=GROUPS),
    "instance_norm": lambda x: reference.instance_norm(x),
}


DISTRIBUTIONS = ("gaussian", "uniform", "post_relu", "bimodal", "student_t3")


def distribution(name: str, rng, shape):
    """Unit-order samples of one of :data:`DISTRIBUTIONS` (float64)."""
    z = rng.standard_normal(shape)
    return {
        "gaussian": lambda: z,
        "uniform": lambda: rng.uniform(-np.sqrt(3), np.sqrt(3), shape),
        "post_relu": lambda: np.maximum(z, 0),
        "bimodal": lambda: 0.2 * z + np.where(rng.random(shape) < 0.5, -1.0, 1.0),
        "student_t3": lambda: rng.standard_t(3, shape),
    }[name]()


def _grad_reference(scheme, x, g):
    """dx = rstd·(g − E[g] − x̂·E[g·x̂]) per set, float64 (NHWC input)."""
    n, h, w, c = x.shape
    groups = {"layer_norm": None, "group_norm": GROUPS, "instance_norm": c}[scheme]
    if groups is None:
        xs, gs = x.reshape(-1, c), g.reshape(-1, c)
        back = lambda t: t.reshape(x.shape)  # noqa: E731
    else:
        to = lambda t: t.reshape(n, h * w, groups, c // groups).transpose(0, 2, 1, 3).reshape(n * groups, -1)  # noqa: E731
        xs, gs = to(x), to(g)
        back = lambda t: t.reshape(n, groups, h * w, c // groups).transpose(0, 2, 1, 3).reshape(x.shape)  # noqa: E731
    mean = xs.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(((xs - mean) ** 2).mean(1, keepdims=True) + 1e-5)
    xhat = (xs - mean) * rstd
    return back(rstd * (gs - gs.mean(1, keepdims=True) - xhat * (gs * xhat).mean(1, keepdims=True)))


def distribution_rows(rng) -> list[dict]:
    """jaxnorm's worst relative error over :data:`MEANS`, per distribution, output and gradient, both programs."""
    rows = []
    for scheme, f in JAXNORM.items():
        for name, program in PROGRAMS.items():
            forward = traced_for(program, f)
            backward = traced_for(program, jax.grad(lambda x, g, f=f: jax.numpy.sum(f(x) * g)))
            for dist in DISTRIBUTIONS:
                worst_y = worst_dx = 0.0
                for mean in MEANS:
                    x = (mean + distribution(dist, rng, SHAPE)).astype(np.float32)
                    g = rng.standard_normal(SHAPE).astype(np.float32)
                    x64 = x.astype(np.float64)
                    y_ref, dx_ref = REFERENCES[scheme](x), _grad_reference(scheme, x64, g.astype(np.float64))
                    y, dx = np.asarray(forward(x), np.float64), np.asarray(backward(x, g), np.float64)
                    worst_y = max(worst_y, float(np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)))
                    worst_dx = max(worst_dx, float(np.linalg.norm(dx - dx_ref) / np.linalg.norm(dx_ref)))
                rows.append({"scheme": scheme, "implementation": name, "distribution": dist,
                             "max_rel_l2_error": worst_y, "max_rel_l2_error_grad": worst_dx})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/exactness_cpu.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for scheme, impls in implementations().items():
        for mean in MEANS:
            x = (mean + rng.standard_normal(SHAPE)).astype(np.float32)
            ref = REFERENCES[scheme](x)
            for name, f in impls.items():
                y = np.asarray(f(x), np.float64)
                err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
                rows.append({"scheme": scheme, "implementation": name, "mean": mean, "rel_l2_error": err})
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    print(f"relative L2 error vs float64, float32 input {SHAPE}, unit spread")
    print(f"{'scheme':14} {'implementation':38}" + "".join(f"{'mean ' + format(m, 'g'):>12}" for m in MEANS))
    for scheme in REFERENCES:
        for name in names:
            errs = [r["rel_l2_error"] for r in rows if r["scheme"] == scheme and r["implementation"] == name]
            if errs:
                print(f"{scheme:14} {name:38}" + "".join(f"{e:12.1e}" for e in errs))
    dist_rows = distribution_rows(rng)
    print(f"\nworst relative L2 error over means {', '.join(format(m, 'g') for m in MEANS)}, output / input gradient")
    print(f"{'scheme':14} {'implementation':30}" + "".join(f"{d:>20}" for d in DISTRIBUTIONS))
    for scheme in JAXNORM:
        for name in PROGRAMS:
            cells = [r for r in dist_rows if r["scheme"] == scheme and r["implementation"] == name]
            print(f"{scheme:14} {name:30}" + "".join(
                f"{r['max_rel_l2_error']:9.1e} /{r['max_rel_l2_error_grad']:8.1e}" for r in cells))
    write_json(args.out, rows + dist_rows, command="python benchmarks/exactness.py " + " ".join(sys.argv[1:]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
