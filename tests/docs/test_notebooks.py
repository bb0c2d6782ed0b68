"""Every notebook in notebooks/ runs top to bottom, with its small settings.

Each notebook reads ``JAXNORM_NOTEBOOK_SMALL``: set to ``1`` it shrinks its
experiment (fewer seeds, steps and batch sizes) so CI stays fast; unset, it
runs the full settings its committed outputs come from. The notebooks are
executed in a copy of the folder, so the committed outputs are never
overwritten, and a cell that raises fails the test with its traceback.
"""

import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_folder_holds_the_five_notebooks():
    assert len(NAMES) == 5, NAMES


def test_committed_notebooks_hold_outputs_from_a_full_run():
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, name
        assert all(cell.get("execution_count") for cell in code), f"{name}: a code cell was never run"
        assert any(cell.get("outputs") for cell in code), f"{name}: no outputs committed"
        text = "".join(str(output.get("text", "")) for cell in code for output in cell.outputs)
        assert "small settings" not in text.lower(), f"{name}: committed from a small-settings run"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_with_small_settings(name, tmp_path, monkeypatch):
    workdir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, workdir)
    # Notebooks read benchmark results as ../benchmarks/results, as in the repository.
    (tmp_path / "benchmarks").symlink_to(NOTEBOOKS.parent / "benchmarks")
    monkeypatch.setenv("JAXNORM_NOTEBOOK_SMALL", "1")
    # The kernel is a fresh process: it must not inherit the test session's
    # 8 simulated devices, and it runs on the CPU like a laptop.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(workdir / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    assert any("small settings" in str(output.get("text", "")).lower() for output in outputs), (
        f"{name} did not announce that it ran with its small settings"
    )
