"""The studies (benchmarks/studies/) run and print what benchmarks/studies/README.md quotes."""

import importlib.util
import pathlib

import pytest

STUDIES = pathlib.Path(__file__).parents[2] / "benchmarks" / "studies"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
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
    ("ab_normalize", ["--rev", "HEAD", "--scheme", "group_norm", "--shape", "2x4x4x64", "--repeats", "2",
                      "--rounds", "1"],
     ["group_norm 2x4x4x64 forward+backward: old = HEAD, new = working tree", "new ", "old ", "flax "]),
    ("ab_normalize", ["--rev", "HEAD", "--scheme", "layer_norm", "--shape", "2x4x4x64", "--repeats", "2",
                      "--rounds", "1", "--forward"],
     ["layer_norm 2x4x4x64 forward: old = HEAD, new = working tree", "new ", "old ", "flax "]),
    ("forward_cost", ["--shapes", "2x4x4x64,6x16", "--repeats", "2"],
     ["layer_norm 2x4x4x64", "batch_norm 2x4x4x64", "rms_norm 6x16", "untested/flax", "test ms"]),
    ("set_kernel_cost", ["--shapes", "2x4x4x64", "--repeats", "2"],
     ["instance_norm 2x4x4x64", "group_norm 2x4x4x64", "batch_norm 2x4x4x64", "floor/flax"]),
    ("fusion_cost", ["--shapes", "2x3x16", "--repeats", "2"],
     ["layer_norm 2x3x16", "rms_norm 2x3x16", "fused/sep", "floor/flax"]),
])
def test_script_runs_and_prints_its_figures(name, argv, expected, capsys):
    assert _script(name).main(argv) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, out


def test_steady_allocator_needs_a_fresh_process(monkeypatch):
    """Asked for in-process, ``--allocator steady`` refuses rather than mislabel a default run."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with pytest.raises(SystemExit):
        _script("page_faults").main(["--repeats", "1", "--allocator", "steady"])


def test_fusion_cost_pieces_match_the_closed_form_backward():
    """The timed pieces compute the LayerNorm/RMSNorm backward they stand for (float64 check)."""
    import jax
    import numpy as np

    module = _script("fusion_cost")
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, 5, 7))
    s = 1 + 0.1 * rng.standard_normal(7)
    for center in (True, False):
        mu = x.mean(-1, keepdims=True) if center else np.zeros((5, 1))
        r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
        xhat = (x - mu) * r
        a = (g * s).mean(-1, keepdims=True)
        b = (g * s * xhat).mean(-1, keepdims=True)
        expected_dx = r * (g * s - (a if center else 0) - xhat * b)
        pieces = module.kernels(center)
        with jax.enable_x64(True):
            args = (x, g, s, mu, r, a, b)
            np.testing.assert_allclose(pieces["dx pass"](*args), expected_dx, rtol=1e-12)
            np.testing.assert_allclose(pieces["fused"](*args), expected_dx, rtol=1e-12)
            sums = pieces["row sums"](*args)
            second = sums[1] if center else sums
            np.testing.assert_allclose(second, 7 * b[:, 0], rtol=1e-12)
            columns = pieces["column sums"](*args)
            np.testing.assert_allclose(columns[0] if center else columns, (g * xhat).sum(0), rtol=1e-12)


def test_set_kernel_cost_pieces_compute_the_sums_they_stand_for():
    """Each scheme's stats and sums are the per-set sums of x, x², g and g·x̂ (float64 check)."""
    import jax
    import numpy as np

    module = _script("set_kernel_cost")
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((2, 2, 3, 3, 64))
    mu, r = rng.standard_normal((2, 2, 1, 1, 64))
    r = 1 + np.abs(r)
    with jax.enable_x64(True):
        for scheme, axes in (("instance_norm", (1, 2)), ("batch_norm", (0, 1, 2))):
            pieces = module.kernels(scheme, x.shape)
            m, rr = (mu[:1], r[:1]) if scheme == "batch_norm" else (mu, r)
            np.testing.assert_allclose(pieces["stats"](x, g, m, rr, 0, 0, 0)[1], (x * x).sum(axes), rtol=1e-12)
            np.testing.assert_allclose(pieces["sums"](x, g, m, rr, 0, 0, 0)[1], (g * (x - m) * rr).sum(axes),
                                       rtol=1e-12)
        grouped = module.kernels("group_norm", x.shape)["stats"](x, g, mu, r, 0, 0, 0)[0]
        np.testing.assert_allclose(grouped, x.reshape(2, 3, 3, 32, 2).sum((1, 2, 4)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scheme", ["layer_norm", "instance_norm", "batch_norm"])
def test_forward_without_the_conditioning_test_compiles_to_flax_kernel_count(scheme):
    """forward_cost's "untested" program is jaxnorm's forward minus the test: as many kernels
    as flax.linen's, so the test and its lax.cond are all that jaxnorm's forward adds."""
    import jax

    row = _script("forward_cost").measure(scheme, (4, 8, 8, 256), repeats=2)
    kernels = row["kernels"]
    if jax.default_backend() == "cpu":
        assert kernels["untested"] == kernels["flax"] < kernels["jaxnorm"], kernels
