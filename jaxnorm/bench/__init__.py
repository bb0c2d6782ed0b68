"""The harness behind ``python -m jaxnorm`` and ``benchmarks/``.

It checks each scheme against its float64 reference and times it under
``jax.jit``, forward and forward+backward, next to flax.linen's equivalent
module (when flax is installed), interleaving the runs in one process.
flax is imported lazily. The tools only the benchmark scripts use (the
steady allocator, GPU timing) are in ``benchmarks/harness/``.

Uses: jaxnorm.bench (cases, run).
"""

from jaxnorm.bench.cases import Case, default_cases
from jaxnorm.bench.run import run_case, run_cases

__all__ = ["Case", "default_cases", "run_case", "run_cases"]
