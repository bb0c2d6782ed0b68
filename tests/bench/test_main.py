"""The main job, ``python -m jaxnorm``: a checked, timed table and its JSON."""

import json
import subprocess
import sys

import pytest

SCHEMES = [
    "layer_norm", "rms_norm", "group_norm", "instance_norm",
    "local_response_norm", "filter_response_norm", "evonorm_s0",
    "batch_norm", "batch_renorm", "representative_batch_norm", "evonorm_b0", "switchable_norm",
    "weight_norm", "spectral_norm", "weight_standardize",
]
ON_KERNELS = {"weight_norm", "spectral_norm", "weight_standardize"}
WITH_FLAX = {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("main") / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxnorm", "--shape", "2x4x4x64", "--repeats", "3", "--json", str(path)],
        capture_output=True, text=True, timeout=600,
    )
    return proc, json.loads(path.read_text())


def test_exits_cleanly_and_prints_table(run):
    proc, _ = run
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("scheme"))
    table = lines[header + 2 : header + 2 + len(SCHEMES)]
    assert [line.split()[0] for line in table] == SCHEMES
    assert all(line.split()[1] == "xla" for line in table)


def test_progress_bar_on_stderr(run):
    proc, _ = run
    assert f"{len(SCHEMES)}/{len(SCHEMES)}" in proc.stderr
    assert "[" + "#" * 24 + "]" in proc.stderr


def test_json_rows_are_checked_and_timed(run):
    _, data = run
    assert data["machine"]["backend"] == "cpu"
    assert "jax" in data["machine"]["versions"]
    rows = {row["scheme"]: row for row in data["rows"]}
    assert list(rows) == SCHEMES
    for row in rows.values():
        assert row["shape"] == ([3, 3, 64, 64] if row["scheme"] in ON_KERNELS else [2, 4, 4, 64])
        assert row["jaxnorm_max_abs_error"] < 1e-5
        assert row["jaxnorm_rel_error_mean_1e4"] < 1e-6
        assert row["jaxnorm_fwd_ms"] > 0 and row["jaxnorm_fwd_bwd_ms"] > 0
        if row["scheme"] not in WITH_FLAX:
            assert "flax_fwd_ms" not in row
            continue
        assert row["flax_fwd_ms"] > 0 and row["flax_fwd_bwd_ms"] > 0
        assert row["ratio_fwd"] == pytest.approx(row["jaxnorm_fwd_ms"] / row["flax_fwd_ms"])
    # flax.linen's default E[x²]−E[x]² is the inexact one at mean 1e4.
    assert rows["layer_norm"]["flax_rel_error_mean_1e4"] > 1e-3
    assert rows["batch_norm"]["flax_rel_error_mean_1e4"] > 1e-3
