"""How often the five-distribution exactness check exceeds 1e-6 over many draws, per scheme and program.

``tests/core/test_exactness.py::test_exact_on_five_distributions_forward_and_gradient``
checks one fixed draw per scheme and distribution (4×6×6×16 float32 at means
0, 1e2, 1e4 and 1e6, output and input gradient against float64 formulas).
This runs the same check (its data and float64 formulas, imported from that
file) over ``--draws`` draws each and prints, per program, scheme and
distribution, the worst output and gradient errors and how many checks
went above 1e-6.

    python benchmarks/studies/exactness_tail.py [--draws 50] [--first-seed 10000] [--program cpu|accelerator]

The accelerator program runs under ``JAXNORM_CPU_LOWERING=accelerator``
(read when a function is traced; every program here is traced afresh).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ["gaussian", "uniform", "post_relu", "bimodal", "student_t3"]
MEANS = (0.0, 1e2, 1e4, 1e6)


def _exactness_tests():
    spec = importlib.util.spec_from_file_location("exactness_tests", REPO / "tests" / "core" / "test_exactness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_program(program: str, draws: int, first_seed: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if program == "accelerator":
        os.environ["JAXNORM_CPU_LOWERING"] = "accelerator"
    else:
        os.environ.pop("JAXNORM_CPU_LOWERING", None)
    te = _exactness_tests()
    for scheme in sorted(te._SCHEMES):
        f = te._SCHEMES[scheme]
        forward = jax.jit(lambda x, f=f: f(x))
        backward = jax.jit(jax.grad(lambda x, g, f=f: jnp.sum(f(x) * g)))
        for dist in DISTRIBUTIONS:
            worst_y = worst_g = 0.0
            over = 0
            for seed in range(first_seed, first_seed + draws):
                rng = np.random.default_rng(seed)
                for mean in MEANS:
                    x = (mean + te._distribution(dist, rng, (4, 6, 6, 16))).astype(np.float32)
                    g = rng.standard_normal(x.shape).astype(np.float32)
                    y_ref, dx_ref = te._float64_norm_and_grad(scheme, x, g)
                    ey, eg = te.rel_l2(forward(x), y_ref), te.rel_l2(backward(x, g), dx_ref)
                    worst_y, worst_g = max(worst_y, ey), max(worst_g, eg)
                    over += (ey >= 1e-6) + (eg >= 1e-6)
            print(f"{program:<12} {scheme:<14} {dist:<11} output {worst_y:.2e}  gradient {worst_g:.2e}  "
                  f"above 1e-6: {over}/{2 * len(MEANS) * draws}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=10_000)
    parser.add_argument("--program", choices=["cpu", "accelerator"], help="one program (default both)")
    args = parser.parse_args(argv)
    for program in [args.program] if args.program else ["cpu", "accelerator"]:
        run_program(program, args.draws, args.first_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
