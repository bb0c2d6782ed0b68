"""Relative error of each implementation at large means (float32 input, unit spread).

For means 0, 1, 1.9, 1e2, 1e4, 1e6: the relative L2 error, against a float64
reference computed on the same float32 inputs, of jaxnorm, flax.linen with
its default (``use_fast_variance=True``) and with ``use_fast_variance=False``,
and PyTorch CPU's functional op when torch is installed. Writes JSON.

    python benchmarks/exactness.py [--out benchmarks/results/exactness_cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import jax
import numpy as np

import jaxnorm as jn
from jaxnorm import reference
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


def implementations():
    """scheme -> {implementation name -> f(x: float32 ndarray) -> ndarray}."""
    impls = {
        "layer_norm": {"jaxnorm": jax.jit(lambda x: jn.layer_norm(x))},
        "group_norm": {"jaxnorm": jax.jit(lambda x: jn.group_norm(x, num_groups=GROUPS))},
        "instance_norm": {"jaxnorm": jax.jit(lambda x: jn.instance_norm(x))},
    }
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
    write_json(args.out, rows, command="python benchmarks/exactness.py " + " ".join(sys.argv[1:]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
