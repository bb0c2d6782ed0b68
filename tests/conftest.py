"""Test configuration: 8 simulated CPU devices, float64 enabled, Triton's interpreter without a GPU.

The device count must be set before jax is first imported (here, before the
``import jax`` below), so every test module sees the same 8 CPU devices:
the sharding tests need them, the rest are unaffected.
"""

import os
import pathlib
import shutil
import sys
import tempfile

# benchmarks/harness/ (the measuring tools only the benchmark scripts use) is
# imported as ``harness``, as those scripts do.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

_DEVICES = "--xla_force_host_platform_device_count=8"
if _DEVICES not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES}".strip()

# The suite is mostly XLA compilation (thousands of small programs), and many
# tests compile the same program (a fresh lambda around the same function,
# the same op on the same shape): one persistent compilation cache for the
# session, shared by the pytest-xdist workers (they inherit this variable),
# compiles each once. A fresh folder per run, so every run compiles from
# scratch; set JAX_COMPILATION_CACHE_DIR to choose one. (Faster compiler
# settings, LLVM -O0 or XLA:CPU's legacy emitters, were tried and refused:
# they change float32 reduction rounding and the compiled programs.)
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxnorm-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Several test workers may share one GPU: allocate its memory on demand.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

import implementations  # noqa: E402  (tests/implementations.py)

# check_grads in float64 needs x64; every test states the dtypes it uses.
jax.config.update("jax_enable_x64", True)

# Without a GPU the Triton kernels run in Triton's interpreter on PyTorch CPU
# tensors; the variable must be set before triton is first imported.
if jax.default_backend() != "gpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Hypothesis profiles of the fuzz suite (tests/fuzz/test_fuzz_*.py, tests/fuzz_strategies.py).
# "ci" (the fuzz suite's default): derandomized (the same examples every run),
# no example database, no shrinking, so that the whole fuzz run stays within
# about a minute on 2 cores. "long" (HYPOTHESIS_PROFILE=long): random
# examples, 10x as many, shrinking on, for a person to run by hand. The fuzz
# tests take their settings from the selected profile
# (fuzz_strategies.examples); the other hypothesis tests keep their own
# settings unless HYPOTHESIS_PROFILE is set.
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                HealthCheck.large_base_example]
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=False,
    phases=(Phase.explicit, Phase.generate), suppress_health_check=_FUZZ_HEALTH,
)
settings.register_profile(
    "long", derandomize=False, deadline=None, print_blob=True, suppress_health_check=_FUZZ_HEALTH,
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:  # the process that made the folder (xdist's controller) removes it
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs an NVIDIA GPU (skipped elsewhere); benchmarks/gpu_check.py runs these on one")


def _lower_for(implementation, monkeypatch):
    """Put ``implementation``'s program in effect: read when a function is traced."""
    if implementation.cpu_lowering is None:
        monkeypatch.delenv("JAXNORM_CPU_LOWERING", raising=False)
    else:
        monkeypatch.setenv("JAXNORM_CPU_LOWERING", implementation.cpu_lowering)


@pytest.fixture(params=["cpu", "accelerator"], ids=["cpu_program", "accelerator_program"])
def program(request, monkeypatch):
    """Run a test with each of jaxnorm's XLA programs on this CPU.

    ``"cpu"``: the CPU's own (XLA:CPU steering, jaxnorm._lowering.xla_cpu);
    ``"accelerator"``: the program XLA:GPU and XLA:TPU compile
    (``JAXNORM_CPU_LOWERING=accelerator``, read when a function is traced:
    jit a fresh function inside the test, not a module-level one).
    """
    _lower_for(implementations.XLA if request.param == "cpu" else implementations.XLA_ACCELERATOR, monkeypatch)
    return request.param


@pytest.fixture
def implementation(request, monkeypatch):
    """The implementation an ``OperationContract`` test runs (parametrized by pytest_generate_tests)."""
    _lower_for(request.param, monkeypatch)
    return request.param


def pytest_generate_tests(metafunc):
    """Pair each operation's cases with every implementation that supports what the test needs.

    For the tests of ``tests/operation_contract.py``: a test class sets
    ``cases``; a test marked with ``implementations.needs(...)`` is
    generated only for the implementations with those capabilities.
    """
    if metafunc.cls is None or not {"case", "implementation"} <= set(metafunc.fixturenames):
        return
    required = getattr(metafunc.function, "needs", frozenset())
    pairs = [pytest.param(case, impl, id=f"{case.name}-{impl.name}")
             for case in metafunc.cls.cases for impl in implementations.available()
             if impl.supports(case, required)]
    metafunc.parametrize(("case", "implementation"), pairs, indirect=["implementation"])
