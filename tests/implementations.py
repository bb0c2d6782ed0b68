"""The implementations behind jaxnorm's functions, as the tests run them on this machine.

One operation (``layer_norm``, ``group_norm``, ...) has several
implementations; ``tests/operation_contract.py`` holds one test base that
every implementation of every operation must pass, and the conftest's
``pytest_generate_tests`` pairs each operation's cases with the
implementations that support them:

- ``xla``: the pure-JAX path as XLA:CPU compiles it (the CPU program of
  :mod:`jaxnorm._lowering.xla_cpu`);
- ``xla_accelerator``: the pure-JAX path as XLA:GPU and XLA:TPU compile it,
  run on this CPU (``JAXNORM_CPU_LOWERING=accelerator``);
- ``triton``: the Triton kernels of ``jaxnorm_kernels`` through the JAX
  binding (``implementation="triton"``), in Triton's interpreter without a
  GPU (``TRITON_INTERPRET=1``, set by conftest.py), compiled on a GPU.

What an implementation cannot do is a capability it lacks, so a test that
needs it is not generated for that implementation (rather than skipped):
the Triton kernels take float32/bfloat16/float16 only, no mask, per-channel
parameters only, reverse-mode derivatives of first order only (a
``custom_vjp``), and compute ``1/sqrt(var + ε)`` unguarded, so a set of
equal entries at ``epsilon=0`` gives NaN there, as flax does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

# Capabilities a test may need.
FLOAT64 = "float64"          # float64 inputs stay float64
MASK = "mask"                # where= masks
PER_EXAMPLE = "per_example"  # per-example scale and bias
FORWARD_MODE = "forward_mode"  # jax.jvp and jax.linearize
SECOND_ORDER = "second_order"  # derivatives of derivatives
ZERO_VARIANCE = "zero_variance"  # epsilon=0 on a set of equal entries gives the bias, finite gradients

_EVERYTHING = frozenset({FLOAT64, MASK, PER_EXAMPLE, FORWARD_MODE, SECOND_ORDER, ZERO_VARIANCE})


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to run a jaxnorm function.

    Attributes:
      name: the test id.
      argument: the functions' ``implementation=`` argument.
      cpu_lowering: ``JAXNORM_CPU_LOWERING`` while the test runs (None: unset).
      capabilities: what it supports beyond float32 reverse mode under
        ``jit`` and ``vmap``.
      needs_triton_cases: only cases the kernels take (``NormCase.triton``).
      scale: how many times larger each axis is in the large-set tests
        (large means, half precision). Triton's interpreter runs every
        program instance in Python, so its sets grow less.
    """

    name: str
    argument: str
    cpu_lowering: str | None = None
    capabilities: frozenset = _EVERYTHING
    needs_triton_cases: bool = False
    scale: int = 4

    def supports(self, case, needs) -> bool:
        return set(needs) <= self.capabilities and (case.triton or not self.needs_triton_cases)

    @property
    def dtype(self):
        """The most precise input dtype it takes: the tests' working precision."""
        import numpy as np

        return np.float64 if FLOAT64 in self.capabilities else np.float32

    def call(self, case):
        """``case.fn`` with this implementation: ``(x, scale, bias, where, **kwargs) -> y``."""
        return lambda x, s, b, w, **kw: case.fn(x, s, b, w, implementation=self.argument, **kw)


XLA = Implementation("xla", "xla")
XLA_ACCELERATOR = Implementation("xla_accelerator", "xla", cpu_lowering="accelerator")
TRITON = Implementation("triton", "triton", capabilities=frozenset(), needs_triton_cases=True, scale=2)


def triton_runs_here() -> bool:
    """The kernels run here: Triton and PyTorch installed, and a GPU or Triton's interpreter."""
    have = all(importlib.util.find_spec(m) is not None for m in ("triton", "torch"))
    return have and (jax.default_backend() == "gpu" or os.environ.get("TRITON_INTERPRET") == "1")


def available() -> list[Implementation]:
    """The implementations this machine runs: both XLA programs, and Triton where it runs."""
    return [XLA, XLA_ACCELERATOR] + ([TRITON] if triton_runs_here() else [])


def needs(*capabilities):
    """Mark a contract test with the capabilities it needs (see the constants above)."""
    def mark(test):
        test.needs = frozenset(capabilities)
        return test
    return mark
