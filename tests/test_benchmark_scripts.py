"""The small diagnostic scripts in benchmarks/ run and print what their notes quote."""

import importlib.util
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv, expected", [
    ("shift_cost", ["--shape", "2x4x4x8", "--repeats", "3"],
     ["shifted/plain:", "(n, c) sum(x) / row sum(x):", "its kernels read 2x the input"]),
    ("kernel_overhead", ["--repeats", "3"], ["per added kernel:"]),
    ("page_faults", ["--repeats", "2"], ["2048 x 4096", "faults"]),
    ("xla_passes", ["--scheme", "instance_norm", "--shape", "2x4x4x8", "--reps", "2"],
     ["jaxnorm:", "flax.linen:", "kernels that move full-size arrays"]),
])
def test_script_runs_and_prints_its_figures(name, argv, expected, capsys):
    assert _script(name).main(argv) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, out
