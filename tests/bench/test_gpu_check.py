"""benchmarks/gpu_check.py, on the CPU: arguments, arithmetic, parsers, verdicts, summary, and a dry run.

The check must run right the first time a GPU is lent, so everything but
the GPU itself is exercised here: ``--dry-run`` runs every stage on the CPU
with tiny shapes and writes the JSON; injected faults show that a stage
that raises, exits or hangs is recorded and the others still run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)
    spec.loader.exec_module(module)
    return module


gc = _load()


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize("argv, message", [
    (["--stages", "env,bogus"], "unknown stage 'bogus'; choose from env, tests, host_sync, timings"),
    (["--stages", ","], "give at least one stage"),
    (["--budget", "-3"], "expected a positive number of seconds, got '-3'"),
    (["--budget", "soon"], "expected a number of seconds, got 'soon'"),
    (["--budget", "10"], "--budget 10: too short for 4 stages (at least 20 s)"),
    (["--stage-budget", "timings"], "expected NAME=SECONDS with NAME one of env, tests, host_sync, timings"),
    (["--stage-budget", "gpu=3"], "expected NAME=SECONDS"),
    (["--inject-fault", "env:explode"], "KIND one of raise, exit, hang"),
    (["--quick", "--dry-run"], "--quick and --dry-run are exclusive"),
    (["--no-isolate", "--inject-fault", "timings:hang"], "needs the stages isolated (drop --no-isolate)"),
    (["--reps", "0"], "expected a positive integer, got '0'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_arguments_exit_2_with_a_message_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gc.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(not_a_dir)])
    assert "exists and is not a directory" in capsys.readouterr().err


def test_budgets_fit_eight_minutes_and_follow_the_options():
    full = gc.stage_budgets(gc.parse_args([]))
    assert list(full) == ["env", "tests", "host_sync", "timings"]
    assert sum(full.values()) <= 450  # + interpreter start and the wheel install: under 8 minutes
    assert sum(gc.stage_budgets(gc.parse_args(["--quick"])).values()) <= 250
    scaled = gc.stage_budgets(gc.parse_args(["--budget", "220"]))
    assert math.isclose(sum(scaled.values()), 220)
    assert math.isclose(scaled["tests"] / scaled["timings"], full["tests"] / full["timings"])
    args = gc.parse_args(["--stages", "timings,tests", "--stage-budget", "tests=30", "--reps", "3"])
    assert args.stages == ["env", "tests", "timings"]  # env always, in the check's order
    assert gc.stage_budgets(args)["tests"] == 30
    assert gc.settings_of(args)["reps"] == 3
    assert gc.settings_of(args)["tests"] == list(gc.GPU_TEST_FILES)
    assert gc.settings_of(gc.parse_args(["--tests", "a.py,b.py::t"]))["tests"] == ["a.py", "b.py::t"]
    assert gc.settings_of(gc.parse_args(["--dry-run"]))["tests"] == list(gc.DRY_TEST_FILES)
    for path in gc.GPU_TEST_FILES:
        assert (ROOT / path).exists(), path


def test_json_goes_to_the_results_only_from_a_gpu(tmp_path):
    args = gc.parse_args(["--out", str(tmp_path)])
    assert gc.json_targets(args, "gpu") == [gc.DEFAULT_JSON, tmp_path / "norms_gpu.json"]
    assert gc.json_targets(args, "cpu") == [tmp_path / "norms_gpu.json"]
    assert gc.json_targets(gc.parse_args(["--dry-run"]), "gpu") == []
    assert gc.json_targets(gc.parse_args(["--dry-run", "--json", "x.json"]), "cpu") == [pathlib.Path("x.json")]


# ------------------------------------------------------------------ bandwidth arithmetic


def test_ideal_bytes_of_the_anchor_shapes():
    from harness.gpu_timing import achieved, ideal_bytes

    gn = ideal_bytes((2, 64, 64, 320), "bfloat16")
    assert gn == {"elements": 2_621_440, "itemsize": 2, "fwd": 10_485_760, "bwd": 15_728_640,
                  "fwd_bwd": 26_214_400}
    ln = ideal_bytes((8192, 4096), "bfloat16")
    assert (ln["fwd"], ln["fwd_bwd"]) == (134_217_728, 335_544_320)
    assert ideal_bytes((4096, 8192), "bfloat16") == ln
    assert ideal_bytes((2, 8, 8, 1280), "float32")["fwd"] == 2 * 163_840 * 4
    # 134 MB in 50 us: 2.68 TB/s, 89% of a 3.0 TB/s copy.
    perf = achieved(50e-6, ln["fwd"], 3.0)
    assert math.isclose(perf["tb_s"], 2.68435456) and math.isclose(perf["frac_copy"], 2.68435456 / 3.0)
    assert achieved(1e-3, 10**9, None)["frac_copy"] is None
    with pytest.raises(ValueError, match="no elements"):
        ideal_bytes((0, 4), "bfloat16")
    with pytest.raises(ValueError, match="time must be positive"):
        achieved(0.0, 10, 3.0)


def test_the_anchor_cases_are_the_issues_shapes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_gpu_norms

    labels = [c.label for c in bench_gpu_norms.anchor_cases()]
    assert sorted(labels) == sorted([
        "group_norm NHWC 2x64x64x320 bf16", "group_norm NHWC 2x32x32x640 bf16",
        "group_norm NHWC 2x16x16x1280 bf16", "group_norm NHWC 2x8x8x1280 bf16",
        "layer_norm tokens 8192x4096 bf16", "layer_norm tokens 4096x8192 bf16",
        "rms_norm tokens 8192x4096 bf16", "rms_norm tokens 4096x8192 bf16"])
    assert labels[0].startswith("layer_norm") and labels[2].startswith("group_norm")  # families interleaved
    assert all(set(c.impls) == {"triton", "xla", "flax"} for c in bench_gpu_norms.anchor_cases())


# ------------------------------------------------------------------ pytest output

PYTEST_OUTPUT = """\
============================= test session starts ==============================
collecting ... collected 6 items

tests/lowering/test_gpu_numerics.py::test_xla_path_matches_float64_at_large_means[layer_norm] PASSED [ 16%]
tests/lowering/test_gpu_numerics.py::test_xla_path_matches_float64_at_large_means[rms_norm] FAILED [ 33%]
tests/lowering/test_gpu_numerics.py::test_triton_matches_xla_at_the_anchor_shapes_in_bfloat16[group_norm 2x8x8x1280] SKIPPED (needs a GPU) [ 50%]
tests/lowering/test_triton_dispatch.py::test_bfloat16_output_within_one_rounding PASSED [ 66%]
tests/lowering/test_triton_dispatch.py::test_unsupported_calls_raise[call0-match0] ERROR [ 83%]
tests/core/test_exactness.py::test_float64_stays_float64[layer_norm] PASSED   [100%]

=========================== short test summary info ============================
FAILED tests/lowering/test_gpu_numerics.py::test_xla_path_matches_float64_at_large_means[rms_norm] - AssertionError: rms_norm: gaussian mean 1e+06: output 3.1e-06
ERROR tests/lowering/test_triton_dispatch.py::test_unsupported_calls_raise[call0-match0] - RuntimeError: CUDA error
========== 1 failed, 3 passed, 1 skipped, 1 error, 2 warnings in 12.34s ==========
"""


def test_pytest_output_is_counted_per_file_with_the_failures():
    r = gc.parse_pytest_output(PYTEST_OUTPUT)
    assert r["complete"] and r["tests_seen"] == 6
    assert r["counts"] == {"passed": 3, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 0, "xpassed": 0,
                           "deselected": 0}
    assert r["by_file"] == {"tests/core/test_exactness.py": {"passed": 1},
                            "tests/lowering/test_gpu_numerics.py": {"passed": 1, "failed": 1, "skipped": 1},
                            "tests/lowering/test_triton_dispatch.py": {"passed": 1, "errors": 1}}
    assert r["failures"] == [
        "FAILED tests/lowering/test_gpu_numerics.py::test_xla_path_matches_float64_at_large_means[rms_norm] - "
        "AssertionError: rms_norm: gaussian mean 1e+06: output 3.1e-06",
        "ERROR tests/lowering/test_triton_dispatch.py::test_unsupported_calls_raise[call0-match0] - RuntimeError: CUDA error"]
    verdict, reasons = gc.tests_verdict(r, "ok")
    assert verdict == "fail" and reasons == ["1 failed, 1 errors"]


def test_pytest_output_cut_short_counts_what_finished():
    cut = "\n".join(PYTEST_OUTPUT.splitlines()[:6])  # killed during the third test
    r = gc.parse_pytest_output(cut)
    assert not r["complete"]
    assert r["counts"]["passed"] == 1 and r["counts"]["failed"] == 1 and r["counts"]["skipped"] == 1
    assert r["failures"] == ["FAILED tests/lowering/test_gpu_numerics.py::test_xla_path_matches_float64_at_large_means"
                             "[rms_norm]"]
    passed_only = "\n".join(line for line in cut.splitlines() if "FAILED" not in line)
    assert gc.tests_verdict(gc.parse_pytest_output(passed_only), "timeout")[0] == "inconclusive"
    everything_skipped = "tests/a.py::t SKIPPED (no GPU)\n===== 1 skipped in 0.1s =====\n"
    assert gc.tests_verdict(gc.parse_pytest_output(everything_skipped), "ok") == (
        "inconclusive", ["no test ran (all skipped: no GPU?)"])
    assert gc.tests_verdict(gc.parse_pytest_output(PYTEST_OUTPUT.replace(
        "1 failed, 3 passed, 1 skipped, 1 error", "3 passed, 1 skipped")), "ok")[0] == "fail"  # per-test lines
    clean = "tests/a.py::t PASSED\n===== 1 passed in 0.1s =====\n"
    assert gc.tests_verdict(gc.parse_pytest_output(clean), "ok") == ("pass", [])


# ------------------------------------------------------------------ host sync: HLO and profiles

HLO = """\
HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%branch_0 (p: f32[8]) -> f32[8] {
  ROOT %p = f32[8]{0} parameter(0)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %pred = pred[] constant(true)
  %conditional.3 = f32[8]{0} conditional(pred[] %pred, f32[8]{0} %x, f32[8]{0} %x), true_computation=%branch_0, false_computation=%branch_0, metadata={op_name="jit(step)/cond"}
  %while.1 = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %t), condition=%c, body=%b
  %fusion = f32[8]{0} fusion(f32[8]{0} %x), kind=kLoop, calls=%fused, metadata={op_name="jit(step)/while(x)/body"}
  %cb = f32[8]{0} custom-call(f32[8]{0} %x), custom_call_target="xla_ffi_python_gpu_callback"
  %tr = f32[8]{0} custom-call(f32[8]{0} %x), custom_call_target="triton_kernel_call"
  ROOT %add = f32[8]{0} add(f32[8]{0} %fusion, f32[8]{0} %x)
}
"""


def test_hlo_ops_that_stop_the_stream_are_counted():
    counts = gc.count_hlo_ops(HLO)
    assert (counts["conditional"], counts["while"], counts["host_callbacks"]) == (1, 1, 1)
    assert counts["custom_call_targets"] == {"xla_ffi_python_gpu_callback": 1, "triton_kernel_call": 1}
    assert gc.count_hlo_ops(HLO.replace("conditional(", "select("))["conditional"] == 0
    shlo = 'stablehlo.case %0 ... "stablehlo.while"(%1) ... stablehlo.custom_call @xla_python_cpu_callback'
    assert gc.count_stablehlo_ops(shlo) | {} == {
        "stablehlo.case": 1, "stablehlo.if": 0, "stablehlo.while": 1, "stablehlo.send": 0, "stablehlo.recv": 0,
        "stablehlo.infeed": 0, "stablehlo.outfeed": 0, "host_callbacks": 1}


def test_hlo_count_on_programs_compiled_here():
    import jax
    import jax.numpy as jnp
    from jax import lax

    x = jnp.arange(8.0)
    cond = jax.jit(lambda x: lax.cond(x[0] > x[1], jnp.sin, jnp.cos, x))
    loop = jax.jit(lambda x: lax.while_loop(lambda c: c[0] < x[0] + 5, lambda c: c + 1, x))
    plain = jax.jit(lambda x: jnp.sin(x) * 2)
    assert gc.count_hlo_ops(cond.lower(x).compile().as_text())["conditional"] == 1
    assert gc.count_hlo_ops(loop.lower(x).compile().as_text())["while"] == 1
    counts = gc.count_hlo_ops(plain.lower(x).compile().as_text())
    assert counts["conditional"] == counts["while"] == counts["host_callbacks"] == 0
    assert gc.count_stablehlo_ops(cond.lower(x).as_text())["stablehlo.case"] == 1


class _Event:
    def __init__(self, name, stats=()):
        self.name, self.stats = name, list(stats)


class _Line:
    def __init__(self, name, events):
        self.name, self.events = name, events


class _Plane:
    def __init__(self, name, lines):
        self.name, self.lines = name, lines


class _Profile:
    def __init__(self, planes):
        self.planes = planes


def test_profile_copies_are_classified_by_name_and_by_memcpy_details():
    d2h_by_details = _Event("MemcpyAsync", [("memcpy_details", "kind_src:device kind_dst:pinned size:4")])
    profile = _Profile([
        _Plane("/host:CPU", [_Line("python", [_Event("$gpu_check.py:1 run"), _Event("cuMemcpyDtoHAsync_v2")])]),
        _Plane("/device:GPU:0", [
            _Line("Stream #13(Compute,MemcpyD2H)", [_Event("loop_fusion"), _Event("MemcpyD2H"), d2h_by_details]),
            _Line("Stream #14(MemcpyH2D)", [_Event("MemcpyH2D"), _Event(
                "MemcpyAsync", [("memcpy_details", "kind_src:pageable kind_dst:device size:4")])]),
            _Line("Stream #15(MemcpyD2D)", [_Event("MemcpyD2D")]),
            _Line("Stream #16(Compute)", [_Event("fusion_3"), _Event("triton_kernel")]),
        ]),
    ])
    s = gc.summarize_profile(profile)
    assert s["d2h"] == 2
    assert s["device_memcpy"] == {"d2h": 2, "h2d": 2, "d2d": 1}
    assert s["host_memcpy_calls"] == {"d2h": 1}
    assert s["device_planes"] == ["/device:GPU:0"] and s["device_events"] == 8
    # No device activity recorded (CUPTI off): the host's driver calls are the count.
    host_only = gc.summarize_profile(_Profile([profile.planes[0]]))
    assert host_only["d2h"] == 1 and host_only["device_events"] == 0


def test_profile_of_a_real_trace_reads_back_here():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.sin(x) + 1)
    x = jnp.ones(1000)
    jax.block_until_ready(f(x))
    s = gc.profile_copies(lambda: jax.block_until_ready(f(x)), label="test")
    assert s["d2h"] == 0 and s["xplane_bytes"] > 0 and s["device_planes"] == []


def test_host_sync_verdicts():
    gpu_clean = {"backend": "gpu", "hlo": {"conditional": 0, "while": 0, "host_callbacks": 0},
                 "profile": {"d2h": 0, "steps": 5}, "profiler_sees_d2h": True}
    assert gc.host_sync_verdict(gpu_clean) == ("pass", [])
    assert gc.host_sync_verdict({**gpu_clean, "profiler_sees_d2h": False})[0] == "inconclusive"
    assert gc.host_sync_verdict({**gpu_clean, "profile": {"d2h": 10, "steps": 5}}) == (
        "fail", ["10 device-to-host copies in 5 profiled steps"])
    assert gc.host_sync_verdict({**gpu_clean, "hlo": {"conditional": 4, "while": 0}}) == (
        "fail", ["compiled step holds 4 conditional"])
    verdict, reasons = gc.host_sync_verdict({**gpu_clean, "backend": "cpu", "hlo": {"conditional": 4}})
    assert verdict == "inconclusive" and reasons[0] == "compiled step holds 4 conditional"
    assert gc.host_sync_verdict(None) == ("not run", [])


# ------------------------------------------------------------------ summary


def _row(label, regime="hbm", triton=True, flag=False):
    perf = {"ms": 0.1, "tb_s": 2.5, "frac_copy": 0.83}
    impls = ["triton", "xla", "flax"]
    return {"label": label, "size_mb": 67.1, "regime": regime, "implementations": impls,
            "fwd": {"triton": perf if triton else None, "xla": perf, "flax": perf},
            "fwd_bwd": {"triton": perf if triton else None, "xla": perf, "flax": perf},
            "unavailable": {} if triton else {"triton": "ValueError: no jax_triton"},
            "errors": {"triton_vs_xla": {"max": 3e-3} if triton else None}, "error_flag": flag}


def _payload(rows, failures=(), skipped=()):
    stages = {
        "env": {"status": "ok", "seconds": 9, "budget_s": 40, "error": None,
                "result": {"backend": "gpu", "triton_launcher": "gpu"}},
        "tests": {"status": "ok", "seconds": 120, "budget_s": 150, "error": None,
                  "result": {"counts": {k: 0 for k in gc.COUNT_KEYS} | {"passed": 140, "failed": len(failures)},
                             "complete": True, "failures": list(failures),
                             "by_file": {"tests/lowering/test_gpu_numerics.py": {"passed": 120, "failed": len(failures)},
                                         "tests/lowering/test_triton_dispatch.py": {"passed": 20}}}},
        "host_sync": {"status": "failed", "seconds": 3, "budget_s": 60, "error": "RuntimeError: no CUPTI",
                      "result": None},
        "timings": {"status": "ok", "seconds": 150, "budget_s": 190, "error": None,
                    "result": {"rows": rows, "cases": [r["label"] for r in rows] + list(skipped),
                               "skipped_rows": list(skipped)}},
    }
    return {"mode": "full", "started": "2026-12-07T00:00:00+00:00", "wall_s": 290.0, "stages": stages,
            "gpu": {"device_kind": "NVIDIA H100 80GB HBM3", "platform": "gpu"},
            "machine": {"versions": {"jax": "0.11.2", "triton": "3.6.0", "jax-triton": "0.3.1"}},
            "copy_bandwidth": {"tb_s": 3.01}, "rows": rows, "skipped_rows": list(skipped),
            "unavailable": [], "verdict": gc.verdict(stages)}


def test_summary_fits_one_screen_and_says_what_matters():
    rows = [_row(f"layer_norm tokens {i}x4096 bf16") for i in range(6)] + [
        _row("group_norm NHWC 2x8x8x1280 bf16", regime="l2", flag=True)]
    failures = [f"FAILED tests/lowering/test_gpu_numerics.py::test_{i} - AssertionError: x" for i in range(11)]
    text = gc.format_summary(_payload(rows, failures, skipped=["rms_norm tokens 4096x8192 bf16"]),
                             ["benchmarks/results/norms_gpu.json", "/out/norms_gpu.json"])
    lines = text.splitlines()
    assert len(lines) <= 45 and max(map(len, lines)) <= 160, (len(lines), max(map(len, lines)))
    assert lines[0].startswith("jaxnorm GPU check (full) on NVIDIA H100 80GB HBM3 (gpu)")
    assert re.search(r"^host_sync\s+failed\s+3s\s+60s", text, re.M)
    assert "error: RuntimeError: no CUPTI" in text
    assert "140 passed, 11 failed" in text and "... 3 more failures" in text
    assert "  tests/lowering/test_gpu_numerics.py: 120 passed, 11 failed" in text
    assert "group_norm NHWC 2x8x8x1280 bf16 [L2]" in text and "3e-03!" in text
    assert " 2.50  83%" in text and "copy bandwidth (3.01 TB/s)" in text
    assert "rms_norm tokens 4096x8192 bf16       skipped: no time left" in text
    assert "verdict: tests fail, host sync not run, timings fail; Triton as default candidate: no" in text
    assert lines[-1] == "JSON: benchmarks/results/norms_gpu.json, /out/norms_gpu.json"


def test_timings_verdict_needs_every_row_with_triton():
    ok = {"status": "ok", "result": {"rows": [_row("a"), _row("b")], "skipped_rows": [], "row_errors": []}}
    assert gc.timings_verdict(ok) == ("pass", [])
    no_triton = {"status": "ok", "result": {"rows": [_row("a"), _row("b", triton=False)]}}
    assert gc.timings_verdict(no_triton) == ("inconclusive", ["triton n/a in 1/2 rows"])
    assert gc.timings_verdict({"status": "timeout", "result": {"rows": [_row("a")], "skipped_rows": ["b"]}}) == (
        "inconclusive", ["not every row ran"])
    assert gc.timings_verdict({"status": "ok", "result": {"rows": [_row("a", flag=True)]}})[0] == "fail"
    assert gc.timings_verdict(None) == ("not run", [])


# ------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``--dry-run --no-isolate``: every stage for real, on the CPU, in this process."""
    out = tmp_path_factory.mktemp("gpu_check_out")
    before = gc.DEFAULT_JSON.stat().st_mtime_ns if gc.DEFAULT_JSON.exists() else None
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)  # as in the dry run's own processes: triton n/a
        code = gc.main(["--dry-run", "--no-isolate", "--out", str(out)])
    after = gc.DEFAULT_JSON.stat().st_mtime_ns if gc.DEFAULT_JSON.exists() else None
    return code, buffer.getvalue(), json.loads((out / "norms_gpu.json").read_text()), before == after


def test_dry_run_writes_the_whole_schema(dry_run):
    code, _, payload, results_untouched = dry_run
    assert results_untouched, "a dry run must not write benchmarks/results/norms_gpu.json"
    assert tuple(payload) == gc.SCHEMA_KEYS and payload["schema"] == gc.SCHEMA
    assert payload["mode"] == "dry" and payload["finished"]
    assert code == 0, payload["verdict"]
    for name, entry in payload["stages"].items():
        assert tuple(entry) == gc.STAGE_KEYS, name
        assert entry["status"] == "ok", (name, entry["error"], entry["traceback"])
    assert payload["machine"]["backend"] == "cpu" and payload["gpu"]["platform"] == "cpu"
    tests = payload["stages"]["tests"]["result"]
    assert tests["complete"] and tests["counts"]["skipped"] > 0 and tests["counts"]["failed"] == 0
    hs = payload["stages"]["host_sync"]["result"]
    assert {"hlo", "stablehlo", "export_cuda", "profile", "controls", "d2h_per_step"} <= set(hs)
    assert hs["profile"]["steps"] == gc.SETTINGS["dry"]["profiled_steps"]
    assert payload["verdict"]["host_sync"] == "inconclusive"  # a CPU program: nothing to pass or fail


def test_dry_run_rows_carry_bandwidth_against_the_copy(dry_run):
    _, _, payload, _ = dry_run
    copy = payload["copy_bandwidth"]["tb_s"]
    assert copy > 0 and payload["rows"]
    for row in payload["rows"]:
        e = math.prod(row["shape"])
        assert row["ideal_bytes"] == {"fwd": 2 * e * 2, "fwd_bwd": 5 * e * 2}  # bf16
        assert row["unavailable"]["triton"].startswith("ValueError")  # no GPU: triton n/a, recorded
        for mode in ("fwd", "fwd_bwd"):
            perf = row[mode]["xla"]
            assert math.isclose(perf["tb_s"], row["ideal_bytes"][mode] / (perf["ms"] / 1e3) / 1e12)
            assert math.isclose(perf["frac_copy"], perf["tb_s"] / copy)
            assert row[mode]["triton"] is None


def test_dry_run_prints_the_summary_last(dry_run):
    _, stdout, payload, _ = dry_run
    tail = stdout[stdout.rindex("jaxnorm GPU check (dry)"):].splitlines()
    assert re.match(r"stage\s+status", tail[1])
    assert [line.split()[0] for line in tail[2:6]] == ["env", "tests", "host_sync", "timings"]
    assert tail[-1].startswith("JSON: ") and tail[-1].endswith("norms_gpu.json")
    assert any(line.startswith("verdict: tests inconclusive") for line in tail)


def test_failing_stages_are_recorded_and_the_others_still_run(tmp_path, capsys):
    """Isolated stages: one exits, one hangs past its budget, one raises; the tests stage runs between them."""
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n\n"
                     "@pytest.mark.skip(reason='x')\ndef test_skip():\n    pass\n")
    out = tmp_path / "out"
    code = gc.main(["--dry-run", "--out", str(out), "--tests", str(tests),
                    "--inject-fault", "env:exit", "--inject-fault", "host_sync:hang",
                    "--inject-fault", "timings:raise", "--stage-budget", "host_sync=1"])
    assert code == 1
    payload = json.loads((out / "norms_gpu.json").read_text())
    stages = payload["stages"]
    assert {n: e["status"] for n, e in stages.items()} == {
        "env": "crashed", "tests": "ok", "host_sync": "timeout", "timings": "failed"}
    assert "exited with status 3 and wrote no result" in stages["env"]["error"]
    assert stages["host_sync"]["seconds"] < 10 and "killed after its budget" in stages["host_sync"]["error"]
    assert stages["timings"]["error"] == "RuntimeError: injected fault in stage timings"
    assert "RuntimeError: injected fault" in stages["timings"]["traceback"]
    counts = stages["tests"]["result"]["counts"]
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (1, 1, 1)
    assert payload["verdict"]["tests"] == "fail"
    for name in ("env", "tests", "host_sync", "timings"):
        assert (out / f"gpu_check_{name}.log").exists(), name
    summary = capsys.readouterr().out
    assert re.search(r"^host_sync\s+timeout", summary, re.M) and "test_sample.py::test_bad" in summary


def test_a_stage_that_raises_in_process_is_recorded(tmp_path, capsys):
    code = gc.main(["--dry-run", "--no-isolate", "--out", str(tmp_path), "--stages", "host_sync",
                    "--inject-fault", "host_sync:raise"])
    payload = json.loads((tmp_path / "norms_gpu.json").read_text())
    assert code == 1
    assert payload["stages"]["env"]["status"] == "ok"  # env always runs
    assert payload["stages"]["host_sync"]["status"] == "failed"
    assert payload["verdict"]["host_sync"] == "not run"
    assert "error: RuntimeError: injected fault in stage host_sync" in capsys.readouterr().out


def test_notebook_05_reads_and_plots_the_checks_json(dry_run, capsys):
    """The notebook's own plotting code, run on the dry run's JSON (the committed file has the same format)."""
    nbformat = pytest.importorskip("nbformat")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notebook = nbformat.read(ROOT / "notebooks" / "05_kernels.ipynb", as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # imports and paths
    exec(code[1], namespace)  # print_check, print_gpu_table, plot_gpu
    _, _, payload, _ = dry_run
    namespace["print_check"](payload)
    namespace["print_gpu_table"](payload)
    namespace["plot_gpu"](payload)
    plt.close("all")
    out = capsys.readouterr().out
    assert "GPU check (dry): cpu, " in out
    assert re.search(r"host sync: \d+ conditional, 0 while in the compiled training step", out)
    assert "layer_norm tokens 64x256 bf16 [L2]" in out and "verdict: tests inconclusive" in out
