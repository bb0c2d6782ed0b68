"""The steady-allocator settings for benchmarks (harness.allocator)."""

import pathlib
import subprocess
import sys

from harness.allocator import STEADY_TUNABLES, glibc_tunables, steady_env, steady_in_effect


def test_steady_env_appends_to_existing_tunables_and_keeps_the_rest():
    env = steady_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{STEADY_TUNABLES}"
    assert env["PATH"] == "/bin"
    assert steady_env({})["GLIBC_TUNABLES"] == STEADY_TUNABLES


def test_steady_in_effect_reads_the_environment():
    assert steady_in_effect({"GLIBC_TUNABLES": STEADY_TUNABLES})
    assert not steady_in_effect({})
    assert not steady_in_effect({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert glibc_tunables({}) is None


def test_reexec_restarts_the_script_with_the_tunables_set(tmp_path):
    """A script calling reexec_steady comes back once, now under the steady settings."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "from harness.allocator import reexec_steady\n"
        "print('start', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
        "reexec_steady(sys.argv)\n"
        "print('after', os.environ.get('GLIBC_TUNABLES'))\n"
    )
    env = {k: v for k, v in steady_env().items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks")  # harness/
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["start None", f"start {STEADY_TUNABLES}", f"after {STEADY_TUNABLES}"]
