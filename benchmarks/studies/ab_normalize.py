"""Old against new: one scheme with another commit's ``jaxnorm/_core/normalize.py`` and ``moments.py``, in one process.

Compiles the gradient of ``sum(f(x, scale, bias)·c)`` (with ``--forward``,
``f`` itself) twice, ahead of time: with the working tree's
:mod:`jaxnorm._core.normalize` and :mod:`jaxnorm._core.moments` ("new") and with the
versions of those files at ``--rev`` ("old", loaded from ``git show``, the
old ``normalize`` importing the old ``moments``, and swapped in where the
schemes import them), then times both and flax.linen's interleaved, and
prints the medians, each over flax.linen's, and the bytes each compiled
program moves. Compiled executables are kept, so swapping the modules (and
clearing JAX's caches) cannot change what "new" runs. Only the
LayerNorm/RMSNorm/GroupNorm/InstanceNorm/BatchNorm paths go through
``normalize``. The files at ``--rev`` must import what the working tree
provides: commits from the package's current layout on (issue 24); the
figures in the README that name older revisions were taken with the
layout of their day (``jaxnorm/_normalize.py`` and ``_stats.py``).

    python benchmarks/studies/ab_normalize.py --rev HEAD~1 --scheme group_norm --shape 16x32x32x256 [--forward] [--allocator steady]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: harness/

import jaxnorm._core.normalize
import jaxnorm._schemes.batch.batch_norm
import jaxnorm._schemes.per_example.group_norm
import jaxnorm._schemes.per_example.layer_norm
from jaxnorm.bench.cases import batch_cases, batch_independent_cases
from jaxnorm.bench.hlo_traffic import compiled_traffic
from jaxnorm.bench.run import _flax_apply
from jaxnorm.bench.timing import interleaved_medians
from harness.allocator import add_allocator_option, apply_allocator_option

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository


def module_at(rev: str, path: str, name: str, source_edit=lambda text: text):
    """``jaxnorm/{path}`` as it was at ``rev`` (edited by ``source_edit``), imported as ``jaxnorm.{name}``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:jaxnorm/{path}"],
                            capture_output=True, text=True, check=True).stdout
    file = pathlib.Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source_edit(source))
    spec = importlib.util.spec_from_file_location(f"jaxnorm.{name}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"jaxnorm.{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def normalize_at(rev: str):
    """``jaxnorm/_core/normalize.py`` at ``rev``, importing ``jaxnorm/_core/moments.py`` at ``rev``."""
    module_at(rev, "_core/moments.py", "moments_at_rev")
    return module_at(rev, "_core/normalize.py", "normalize_at_rev",
                     lambda text: text.replace("from jaxnorm._core.moments import", "from jaxnorm.moments_at_rev import"))


def use_normalize(module) -> None:
    """Point the schemes that call ``normalize`` at ``module``'s functions."""
    jaxnorm._schemes.per_example.layer_norm.normalize = module.normalize
    jaxnorm._schemes.per_example.group_norm.normalize = module.normalize
    jaxnorm._schemes.batch.batch_norm.normalize_with_stats = module.normalize_with_stats
    jax.clear_caches()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit whose _normalize.py is 'old'")
    parser.add_argument("--scheme", default="layer_norm")
    parser.add_argument("--shape", default="2048x4096")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward", action="store_true", help="time the forward pass, not forward+backward")
    add_allocator_option(parser)
    args = parser.parse_args(argv)
    apply_allocator_option(args, argv, parser)
    shape = tuple(int(n) for n in args.shape.split("x"))
    case = next(c for c in batch_independent_cases(shape) + batch_cases(shape) if c.scheme == args.scheme)
    rng = np.random.default_rng(0)
    x, cot = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    scale = jnp.asarray(1 + 0.1 * rng.standard_normal(case.param_shape), jnp.float32)
    bias = jnp.asarray(0.1 * rng.standard_normal(case.param_shape), jnp.float32)
    inputs = (x, scale, bias, cot)

    def grad_of(apply):
        if args.forward:
            return jax.jit(lambda x, s, b, c: apply(x, s, b))
        return jax.jit(jax.grad(lambda x, s, b, c: jnp.sum(apply(x, s, b) * c), argnums=(0, 1, 2)))

    programs, moved = {}, {}
    for name in ("new", "old"):
        if name == "old":
            use_normalize(normalize_at(args.rev))
        grad = grad_of(case.apply)
        programs[name] = grad.lower(*inputs).compile()
        moved[name] = compiled_traffic(grad, *inputs, like=x)
    use_normalize(jaxnorm._core.normalize)
    programs["flax"] = grad_of(_flax_apply(case)).lower(*inputs).compile()
    new, old = programs["new"](*inputs), programs["old"](*inputs)
    new, old = (jax.tree.leaves(t) for t in (new, old))
    differs = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(new, old))
    what = "forward" if args.forward else "forward+backward"
    print(f"{args.scheme} {args.shape} {what}: old = {args.rev}, new = working tree; moved/x old {moved['old']:.0f}, "
          f"new {moved['new']:.0f}; largest difference of the outputs {differs:.1e}")
    names = list(programs)
    for _ in range(args.rounds):
        times = interleaved_medians([functools.partial(programs[k], *inputs) for k in names],
                                    repeats=args.repeats)
        print("  ".join(f"{k} {1e3 * t:.3f} ms ({t / times[-1]:.2f})" for k, t in zip(names, times)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
