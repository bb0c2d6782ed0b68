"""Test configuration: 8 simulated CPU devices, float64 enabled, Triton's interpreter without a GPU.

The device count must be set before jax is first imported (here, before the
``import jax`` below), so every test module sees the same 8 CPU devices:
the sharding tests need them, the rest are unaffected.
"""

import os

import shutil

_DEVICES = "--xla_force_host_platform_device_count=8"
if _DEVICES not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES}".strip()
_SUBPROCESS_XLA_FLAGS = os.environ["XLA_FLAGS"]

# Compile faster on the CPU: the suite is mostly compilation (thousands of
# small programs). LLVM's optimization level and XLA:CPU's choice of loop
# emitters change how fast the machine code runs, not what it computes (no
# fast-math either way), and not XLA's fusion decisions, which some tests
# count; together they cut the suite's time by about 30%. Subprocesses that
# tests start (`python -m jaxnorm`, the examples) get the default compiler.
# JAXNORM_TEST_DEFAULT_COMPILER=1 keeps the defaults here too; never on a GPU.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if os.environ.get("JAXNORM_TEST_DEFAULT_COMPILER") != "1" and shutil.which("nvidia-smi") is None:
    os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {_FAST_COMPILE}"

# Several test workers may share one GPU: allocate its memory on demand.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

# check_grads in float64 needs x64; every test states the dtypes it uses.
jax.config.update("jax_enable_x64", True)

# Without a GPU the Triton kernels run in Triton's interpreter on PyTorch CPU
# tensors; the variable must be set before triton is first imported.
if jax.default_backend() != "gpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["XLA_FLAGS"] = _SUBPROCESS_XLA_FLAGS  # read: the backends exist now

# Hypothesis profiles of the fuzz suite (tests/test_fuzz_*.py, tests/fuzz_strategies.py).
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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs an NVIDIA GPU (skipped elsewhere); benchmarks/gpu_check.py runs these on one")


@pytest.fixture(params=["cpu", "accelerator"], ids=["cpu_program", "accelerator_program"])
def program(request, monkeypatch):
    """Run a test with each of jaxnorm's programs on this CPU.

    ``"cpu"``: the CPU's own (XLA:CPU steering, jaxnorm._xla_cpu);
    ``"accelerator"``: the program XLA:GPU and XLA:TPU compile
    (``JAXNORM_CPU_LOWERING=accelerator``, read when a function is traced:
    jit a fresh function inside the test, not a module-level one).
    """
    if request.param == "accelerator":
        monkeypatch.setenv("JAXNORM_CPU_LOWERING", "accelerator")
    else:
        monkeypatch.delenv("JAXNORM_CPU_LOWERING", raising=False)
    return request.param
