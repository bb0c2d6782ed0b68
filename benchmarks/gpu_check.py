"""jaxnorm's GPU check: one command, one H100/H200, at most 8 minutes.

Run it from the repository root on a machine with an NVIDIA GPU:

    python3 benchmarks/gpu_check.py --out DIR

It needs jax with a CUDA plugin, flax, pytest, triton and torch (all on the
lent H100/H200 image) and, for ``implementation="triton"``, jax-triton
(carried as a wheel: see the README's "GPU check"). jaxnorm itself is not
installed: the check imports ``jaxnorm`` and ``jaxnorm_kernels`` (the
``kernels/`` folder) from this tree, for itself and for its subprocesses.

Stages, in this order, each with its own time budget (seconds: full run /
``--quick``); each runs in a fresh Python process (a CUDA error, a crash or
a hang in one leaves the others a clean GPU), is killed at its budget, and
records what it had done and why it stopped:

  env        (40 / 30)   device, driver, versions, where jaxnorm and the
                         kernels were imported from, whether jax_triton
                         imports, a tiny jit as smoke test. Always runs.
  tests      (150 / 120) pytest, one process, on the GPU-marked tests
                         (tests/lowering/test_gpu_numerics.py: the XLA path against
                         float64 on the GPU, exactness at means 1e4 and 1e6
                         on five distributions, compiled GPU programs free of
                         control flow, the Triton kernels against the XLA
                         path, and the kernels launched from PyTorch CUDA
                         tensors), then tests/lowering/test_triton_dispatch.py (the
                         JAX binding: jit, grad, vmap) on the GPU. Counts per
                         file and the failures' first lines; a run cut off
                         by its budget keeps the counts of what finished.
  host_sync  (60 / 40)   a jitted training step of a small CNN built from
                         jaxnorm.linen layers (GroupNorm, BatchNorm,
                         InstanceNorm, LayerNorm, RMSNorm): conditional /
                         while / host-callback ops in its compiled HLO, in
                         its StableHLO and in an export for "cuda"; and the
                         device-to-host copies in a profiled run of the step
                         (jax.profiler trace, read back with
                         jax.profiler.ProfileData), with a positive control
                         (a device_get, and a lax.cond, profiled the same
                         way) that shows the profiler does see such copies.
  timings    (190 / 60)  copy bandwidth, then the XLA path, the Triton
                         kernels and flax.linen on the anchor shapes
                         (GroupNorm 2x64x64x320, 2x32x32x640, 2x16x16x1280,
                         2x8x8x1280 bf16 NHWC, 32 groups; LayerNorm and
                         RMSNorm 8192x4096 and 4096x8192 bf16), forward and
                         forward+backward, as achieved bandwidth (ideal
                         bytes: fwd 2·E·b, fwd+bwd 5·E·b) and as a fraction
                         of the copy bandwidth measured in the same run
                         (benchmarks/bench_gpu_norms.py does the timing:
                         warm-up, batches ended by block_until_ready,
                         median of many, interleaved, inputs rotated below
                         64 MB). Rows are written as they finish; rows the
                         budget leaves no time for are listed as skipped.

The JSON (``benchmarks/results/norms_gpu.json``, and ``DIR/norms_gpu.json``
with ``--out DIR``) is rewritten after every stage, so a run killed from
outside still leaves what it had. Its keys (``SCHEMA``):

  schema, command, started, finished, wall_s, mode, settings,
  machine        jaxnorm.bench.machine.machine_info() of the GPU process
  gpu            {device_kind, platform}
  stages         {name: {status, seconds, budget_s, error, traceback,
                  returncode, log, result}}; status is one of ok, failed,
                  timeout, crashed, skipped
  verdict        {tests, host_sync, timings, triton_default_candidate,
                  reasons}; each pass / fail / inconclusive / not run
  copy_bandwidth, rows, unavailable   as benchmarks/bench_gpu_norms.py
                  writes them (what notebooks/05_kernels.ipynb plots)
  skipped_rows   timing rows the budget left out

Options: ``--quick`` (fewer repetitions, shorter budgets: about 4 minutes),
``--stages tests,timings`` (env always runs), ``--budget SECONDS`` (scales
the stage budgets to this total), ``--stage-budget NAME=SECONDS``,
``--tests NODEIDS`` (comma-separated, instead of the default files),
``--dry-run`` (the whole control flow on the CPU with tiny shapes, a few
seconds a stage; writes only to ``--out``, never to benchmarks/results),
``--no-isolate`` (stages in this process: for the CPU tests of the check),
``--inject-fault STAGE:raise|exit|hang`` (for testing the check itself).

Exit status: 0 when every stage ran and nothing failed; 1 when a stage
failed or a verdict is "fail"; 2 for bad arguments or no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
SCHEMA = "jaxnorm-gpu-check/1"
SCHEMA_KEYS = ("schema", "command", "started", "finished", "wall_s", "mode", "settings", "machine", "gpu",
               "stages", "verdict", "copy_bandwidth", "rows", "unavailable", "skipped_rows")
STAGE_KEYS = ("status", "seconds", "budget_s", "error", "traceback", "returncode", "log", "result")
STAGES = ("env", "tests", "host_sync", "timings")
STATUSES = ("ok", "failed", "timeout", "crashed", "skipped")
DEFAULT_JSON = REPO / "benchmarks" / "results" / "norms_gpu.json"
JSON_NAME = "norms_gpu.json"
FAULTS = ("raise", "exit", "hang")

# Seconds per stage. Full: 440 s in all, so that with Python's start and the
# wheel install the command stays under 8 minutes.
BUDGETS = {
    "full": {"env": 40, "tests": 150, "host_sync": 60, "timings": 190},
    "quick": {"env": 30, "tests": 120, "host_sync": 40, "timings": 60},
    "dry": {"env": 60, "tests": 90, "host_sync": 90, "timings": 90},
}
# Per mode: timing repetitions, batch duration, copy-bandwidth array, rotated pool,
# host-sync model size and profiled steps.
SETTINGS = {
    "full": {"reps": 20, "target_ms": 20.0, "copy_mib": 1024, "pool_mb": 256, "batch": 32, "image": 32,
             "width": 64, "profiled_steps": 5},
    "quick": {"reps": 7, "target_ms": 10.0, "copy_mib": 256, "pool_mb": 128, "batch": 16, "image": 32,
              "width": 32, "profiled_steps": 3},
    "dry": {"reps": 2, "target_ms": 1.0, "copy_mib": 4, "pool_mb": 1, "batch": 4, "image": 8,
            "width": 8, "profiled_steps": 2},
}
# tests/core/test_exactness.py runs its functions eagerly, op by op: minutes on a GPU; add it with --tests.
GPU_TEST_FILES = ("tests/lowering/test_gpu_numerics.py", "tests/lowering/test_triton_dispatch.py")
DRY_TEST_FILES = ("tests/lowering/test_gpu_numerics.py",)
KILL_GRACE_S = 5.0  # a stage process is killed this long after its budget
MIN_STAGE_S = 5.0  # a stage with less time than this left is skipped


# ------------------------------------------------------------------ arguments


def _stage_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--stages: give at least one stage, e.g. --stages tests,timings")
    for name in names:
        if name not in STAGES:
            raise argparse.ArgumentTypeError(
                f"--stages: unknown stage {name!r}; choose from {', '.join(STAGES)} (comma-separated)")
    return [s for s in STAGES if s in names or s == "env"]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _stage_budget(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    if not sep or name not in STAGES:
        raise argparse.ArgumentTypeError(
            f"--stage-budget: expected NAME=SECONDS with NAME one of {', '.join(STAGES)}, got {text!r}")
    return name, _positive_seconds(seconds)


def _fault(text: str) -> tuple[str, str]:
    stage, sep, kind = text.partition(":")
    if not sep or stage not in STAGES or kind not in FAULTS:
        raise argparse.ArgumentTypeError(
            f"--inject-fault: expected STAGE:KIND with STAGE one of {', '.join(STAGES)} and KIND one of "
            f"{', '.join(FAULTS)}, got {text!r}")
    return stage, kind


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description="jaxnorm's GPU check: GPU tests, host-sync count, timings; one JSON.",
        epilog="See the module docstring (and the README's 'GPU check') for the stages and the JSON.")
    parser.add_argument("--out", metavar="DIR", help="also write the JSON and the stage logs into DIR "
                        "(on the device machine: --out $OUT, so that they come back)")
    parser.add_argument("--json", metavar="PATH", help=f"where to write the JSON (default "
                        f"{DEFAULT_JSON.relative_to(REPO)}; with --dry-run: only --out)")
    parser.add_argument("--stages", type=_stage_list, default=list(STAGES),
                        help=f"comma-separated stages to run, of {', '.join(STAGES)} (env always runs)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter budgets (~4 min)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the whole check on the CPU with tiny shapes (tests the check, measures nothing)")
    parser.add_argument("--budget", type=_positive_seconds, metavar="SECONDS",
                        help="total time for all stages; the stage budgets are scaled to it")
    parser.add_argument("--stage-budget", type=_stage_budget, action="append", default=[], metavar="NAME=SECONDS",
                        help="one stage's budget (repeatable); applied after --budget")
    parser.add_argument("--tests", metavar="NODEIDS",
                        help="comma-separated pytest files or node ids for the tests stage, instead of "
                             + ", ".join(GPU_TEST_FILES))
    parser.add_argument("--reps", type=_positive_int, help="timed repetitions per row (default 20; quick 7)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run the stages in this process, not one fresh process each")
    parser.add_argument("--inject-fault", type=_fault, action="append", default=[], metavar="STAGE:KIND",
                        help="make a stage fail: raise an exception, exit the process, or hang (testing)")
    # Internal: the stage processes the check starts.
    parser.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--stage-result", help=argparse.SUPPRESS)
    parser.add_argument("--stage-seconds", type=float, help=argparse.SUPPRESS)
    return parser


def parse_args(argv) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick and args.dry_run:
        parser.error("--quick and --dry-run are exclusive: --dry-run already uses tiny settings")
    if not args.isolate:
        for stage, kind in args.inject_fault:
            if kind != "raise":
                parser.error(f"--inject-fault {stage}:{kind} needs the stages isolated (drop --no-isolate): "
                             f"it would {'end' if kind == 'exit' else 'hang'} this process")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    if args.run_stage and not args.stage_result:
        parser.error("--run-stage needs --stage-result")
    if args.budget is not None and args.budget < MIN_STAGE_S * len(args.stages):
        parser.error(f"--budget {args.budget:g}: too short for {len(args.stages)} stages "
                     f"(at least {MIN_STAGE_S * len(args.stages):g} s)")
    return args


def mode_of(args) -> str:
    return "dry" if args.dry_run else "quick" if args.quick else "full"


def stage_budgets(args) -> dict[str, float]:
    """Seconds per selected stage: the mode's, scaled to ``--budget``, then ``--stage-budget``."""
    base = {name: float(BUDGETS[mode_of(args)][name]) for name in args.stages}
    if args.budget is not None:
        factor = args.budget / sum(base.values())
        base = {name: seconds * factor for name, seconds in base.items()}
    for name, seconds in args.stage_budget:
        if name in base:
            base[name] = seconds
    return base


def settings_of(args) -> dict:
    settings = dict(SETTINGS[mode_of(args)])
    if args.reps is not None:
        settings["reps"] = args.reps
    settings["tests"] = (args.tests.split(",") if args.tests
                         else list(DRY_TEST_FILES if args.dry_run else GPU_TEST_FILES))
    return settings


# ------------------------------------------------------------------ imports


def import_paths() -> list[str]:
    """sys.path entries that make this tree's ``jaxnorm`` and ``jaxnorm_kernels`` importable.

    ``kernels/`` installs as ``jaxnorm_kernels``; without an install, a
    temporary folder holding a link of that name to ``kernels/`` stands in.
    """
    paths = [str(REPO), str(BENCHMARKS)]
    kernels = REPO / "kernels"
    if kernels.is_dir():
        tag = hashlib.sha1(str(REPO).encode()).hexdigest()[:10]  # one per checkout: worktrees don't share it
        shim = Path(tempfile.gettempdir()) / f"jaxnorm_gpu_check_{tag}"
        link = shim / "jaxnorm_kernels"
        try:
            shim.mkdir(exist_ok=True)
            if link.is_symlink() and Path(os.readlink(link)) != kernels:
                link.unlink()
            if not link.exists():
                link.symlink_to(kernels, target_is_directory=True)
            paths.insert(0, str(shim))
        except OSError:
            pass  # then whatever jaxnorm_kernels is installed (or none) is used; env records which
    return paths


def use_import_paths() -> list[str]:
    paths = import_paths()
    for p in reversed(paths):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    return paths


def child_env(args, paths: list[str]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    # The stages share the GPU one after another; none should hold 75% of it.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
        # No Triton interpreter either: a dry run tests the check, not the kernels
        # (tests/lowering/test_triton_dispatch.py runs them through the interpreter).
        env.pop("TRITON_INTERPRET", None)
    return env


# ------------------------------------------------------------------ stage context


class Context:
    """What a stage gets: its settings, a deadline, and a way to save partial results."""

    def __init__(self, args, seconds: float, save=None):
        self.args = args
        self.mode = mode_of(args)
        self.settings = settings_of(args)
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self._save = save
        self.log_dir = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, result: dict) -> None:
        if self._save is not None:
            self._save(result)

    def fault(self, stage: str) -> None:
        for name, kind in self.args.inject_fault:
            if name != stage:
                continue
            print(f"[{stage}] injected fault: {kind}", flush=True)
            if kind == "raise":
                raise RuntimeError(f"injected fault in stage {stage}")
            if kind == "exit":
                sys.stdout.flush()
                os._exit(3)
            if kind == "hang":
                while True:
                    time.sleep(1)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


# ------------------------------------------------------------------ stage: env


def _nvidia_smi() -> dict:
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,pstate"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": _first_line(e)}
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[:300]}
    rows = [dict(zip(fields.split(","), (v.strip() for v in line.split(","))))
            for line in out.stdout.strip().splitlines()]
    return {"gpus": rows}


def _torch_cuda() -> dict:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"available": False, "version": torch.__version__}
        p = torch.cuda.get_device_properties(0)
        return {"available": True, "version": torch.__version__, "name": p.name,
                "multiprocessors": p.multi_processor_count, "total_memory": p.total_memory,
                "l2_cache_bytes": getattr(p, "L2_cache_size", None),
                "capability": f"{p.major}.{p.minor}"}
    except Exception as e:  # noqa: BLE001 - a description, never a reason to stop
        return {"error": _first_line(e)}


def _git_commit() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": _first_line(e)}
    if head.returncode != 0:
        return {"error": "not a git checkout"}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def stage_env(ctx: Context) -> dict:
    ctx.fault("env")
    import jax
    import jax.numpy as jnp

    from jaxnorm.bench.machine import machine_info

    result: dict = {"backend": jax.default_backend()}
    devices = jax.devices()
    result["devices"] = [{"kind": d.device_kind, "platform": d.platform, "id": d.id} for d in devices]
    result["machine"] = machine_info()
    result["gpu"] = {"device_kind": devices[0].device_kind, "platform": devices[0].platform}
    ctx.save(result)
    result["smoke"] = float(jax.jit(lambda x: (2 * x).sum())(jnp.arange(4.0))) == 12.0
    import jaxnorm

    imports = {"jaxnorm": jaxnorm.__file__}
    try:
        import jaxnorm_kernels

        imports["jaxnorm_kernels"] = jaxnorm_kernels.__file__
    except Exception as e:  # noqa: BLE001
        imports["jaxnorm_kernels"] = f"not importable: {_first_line(e)}"
    result["imports"] = imports
    try:
        from bench_gpu_norms import versions

        result["versions"] = versions()
    except Exception as e:  # noqa: BLE001
        result["versions"] = {"error": _first_line(e)}
    try:
        from jaxnorm._lowering.triton_dispatch import kernels

        ops = kernels()
        result["triton_launcher"] = ops.launcher_available() if ops is not None else None
    except Exception as e:  # noqa: BLE001
        result["triton_launcher"] = f"error: {_first_line(e)}"
    if result["backend"] == "gpu":
        result["nvidia_smi"] = _nvidia_smi()
        result["torch_cuda"] = _torch_cuda()
    result["git"] = _git_commit()
    result["environment"] = {k: os.environ.get(k) for k in (
        "JAX_PLATFORMS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "TRITON_INTERPRET", "PYTHONPATH",
        "JAXNORM_CPU_LOWERING")}
    return result


# ------------------------------------------------------------------ stage: tests

_PYTEST_LINE = re.compile(r"^(?P<id>\S+?::\S.*?)\s+(?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_PYTEST_SUMMARY = re.compile(r"^=+ (?P<body>.*\b(passed|failed|skipped|errors?|xfailed|xpassed|deselected|"
                             r"no tests ran)\b.*) in [\d.]+s")
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)")
_PYTEST_SHORT = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")
OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
            "XFAIL": "xfailed", "XPASS": "xpassed"}
COUNT_KEYS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "deselected")


def parse_pytest_output(text: str) -> dict:
    """Counts, per-file counts and failures from ``pytest -v -rfE`` output, complete or cut short.

    The final summary line ("== 2 failed, 40 passed in 9.1s ==") gives the
    counts when present (``complete``); otherwise they are counted from the
    per-test lines that were printed before the run was stopped.
    """
    per_test: dict[str, str] = {}
    failures: list[str] = []
    summary = None
    for line in text.splitlines():
        line = line.rstrip()
        m = _PYTEST_LINE.match(line)
        if m and "::" in m["id"]:
            per_test[m["id"]] = OUTCOMES[m["outcome"]]
            continue
        m = _PYTEST_SHORT.match(line)
        if m:
            entry = f"{m[1]} {m[2]}" + (f" - {m[3]}" if m[3] else "")
            if entry not in failures:
                failures.append(entry[:300])
            continue
        m = _PYTEST_SUMMARY.match(line)
        if m:
            summary = m["body"]
    seen = Counter(per_test.values())
    counts = {k: seen.get(k, 0) for k in COUNT_KEYS}
    if summary is not None:
        for number, word in _PYTEST_COUNT.findall(summary):
            key = "errors" if word.startswith("error") else word
            if key in counts:
                counts[key] = int(number)
        for key in ("failed", "errors"):  # a failure printed is a failure, whatever the last line says
            counts[key] = max(counts[key], seen.get(key, 0))
    by_file: dict[str, dict] = {}
    for test_id, outcome in per_test.items():
        file = test_id.split("::", 1)[0]
        by_file.setdefault(file, Counter())[outcome] += 1
    for test_id, outcome in per_test.items():
        if outcome in ("failed", "errors") and not any(test_id in f for f in failures):
            failures.append(f"{'FAILED' if outcome == 'failed' else 'ERROR'} {test_id}")
    return {"complete": summary is not None, "summary_line": summary, "counts": counts,
            "by_file": {f: dict(c) for f, c in sorted(by_file.items())}, "failures": failures[:40],
            "tests_seen": len(per_test)}


def _echo_filter(stage: str):
    if stage == "tests":  # one line per passing test is for the log, not the screen
        return lambda line: not re.search(r"\s(PASSED|SKIPPED|XFAIL)\b", line)
    return lambda line: True


def run_logged(cmd, *, env, timeout: float, log_path: Path | None, prefix: str, echo=lambda line: True,
               cwd=REPO) -> tuple[int | None, str, bool]:
    """Run ``cmd`` in its own process group; tee its output to ``log_path`` and (filtered) to stdout.

    Returns ``(returncode, output, timed_out)``; on timeout the group is
    killed and returncode is None.
    """
    lines: list[str] = []
    log = open(log_path, "a", encoding="utf-8", errors="replace") if log_path else None
    if log:
        log.write(f"$ {shlex.join(map(str, cmd))}\n")
        log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            text=True, errors="replace", bufsize=1, start_new_session=True)

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if log:
                log.write(line)
                log.flush()
            if echo(line.rstrip("\n")):
                sys.stdout.write(f"{prefix}{line}")
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    reader.join(timeout=10)
    if log:
        if timed_out:
            log.write(f"\n[killed after {timeout:.0f} s]\n")
        log.close()
    return (None if timed_out else proc.returncode), "".join(lines), timed_out


def stage_tests(ctx: Context) -> dict:
    ctx.fault("tests")
    targets = ctx.settings["tests"]
    missing = [t for t in targets if not (REPO / t.split("::", 1)[0]).exists()]
    present = [t for t in targets if t not in missing]
    result: dict = {"targets": targets, "missing": missing}
    if not present:
        raise FileNotFoundError(f"none of the test files exist: {', '.join(targets)}")
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-v", "-rfE",
           "--tb=short", "--color=no", *present]
    result["command"] = shlex.join(cmd)
    log_path = ctx.log_dir / "gpu_check_tests.log" if ctx.log_dir else None
    returncode, output, timed_out = run_logged(
        cmd, env=child_env(ctx.args, import_paths()), timeout=ctx.remaining(), log_path=log_path,
        prefix="[tests] ", echo=_echo_filter("tests"))
    result.update(parse_pytest_output(output))
    result["returncode"] = returncode
    result["timed_out"] = timed_out
    if timed_out:
        result["note"] = f"pytest stopped at the stage's budget after {result['tests_seen']} tests"
    elif returncode not in (0, 1, 5):  # 5: no tests collected; 2-4: interrupted, internal or usage error
        result["note"] = f"pytest exited with status {returncode}: " + output.strip()[-500:]
    return result


# ------------------------------------------------------------------ stage: host_sync

# Compiled HLO: an instruction is "%name = shape op(operands), attributes".
_HLO_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s(?P<op>[a-z][a-z\-]*)\(")
_HLO_TARGET = re.compile(r'custom_call_target="([^"]+)"')
HLO_HOST_OPS = ("conditional", "while", "infeed", "outfeed", "send", "recv", "send-done", "recv-done")
STABLEHLO_OPS = ("stablehlo.case", "stablehlo.if", "stablehlo.while", "stablehlo.send", "stablehlo.recv",
                 "stablehlo.infeed", "stablehlo.outfeed")


def count_hlo_ops(hlo_text: str) -> dict:
    """Ops of a compiled (optimized) HLO module that can stop the stream for the host.

    ``conditional`` (XLA:GPU copies the branch index to the host and waits)
    and ``while`` (the loop predicate, each trip), host transfers
    (infeed/outfeed/send/recv) and custom calls whose target names a host
    callback. Metadata and attributes are ignored, so an op name inside a
    string does not count.
    """
    counts = {op: 0 for op in HLO_HOST_OPS}
    targets: Counter = Counter()
    for line in hlo_text.splitlines():
        head = re.split(r",\s*(?:metadata|backend_config|frontend_attributes)=", line, maxsplit=1)[0]
        m = _HLO_OP.match(head)
        if not m:
            continue
        op = m["op"]
        if op in counts:
            counts[op] += 1
        elif op == "custom-call":
            t = _HLO_TARGET.search(line)
            targets[t[1] if t else "?"] += 1
    counts["host_callbacks"] = sum(n for t, n in targets.items() if "callback" in t.lower() or "host" in t.lower())
    counts["custom_call_targets"] = dict(targets)
    return counts


def count_stablehlo_ops(text: str) -> dict:
    """Control-flow and host-transfer ops in StableHLO text (``jit(f).lower(...).as_text()`` or an export)."""
    counts = {op: len(re.findall(rf"\b{re.escape(op)}\b", text)) for op in STABLEHLO_OPS}
    counts["host_callbacks"] = len(re.findall(r"stablehlo\.custom_call\s+@\w*callback", text))
    return counts


_D2H = re.compile(r"memcpy\s*d2h|memcpyd2h|dtoh|devicetohost|device_to_host|d2h", re.I)
_H2D = re.compile(r"memcpy\s*h2d|memcpyh2d|htod|hosttodevice|host_to_device|h2d", re.I)
_HOST_MEM = ("pinned", "pageable", "host", "managed_host")


def _direction(name: str, details: str) -> str | None:
    """'d2h', 'h2d', 'd2d' or 'other' for a memcpy event; None when the event is no memcpy."""
    text = f"{name} {details}"
    if "memcpy" not in text.lower() and "kind_src" not in details:
        return None
    m_src = re.search(r"kind_src:(\w+)", details)
    m_dst = re.search(r"kind_dst:(\w+)", details)
    if m_src and m_dst:
        src, dst = m_src[1].lower(), m_dst[1].lower()
        if src == "device" and dst in _HOST_MEM:
            return "d2h"
        if src in _HOST_MEM and dst == "device":
            return "h2d"
        if src == "device" and dst == "device":
            return "d2d"
    if _D2H.search(name):
        return "d2h"
    if _H2D.search(name):
        return "h2d"
    if re.search(r"d2d|dtod|p2p", name, re.I):
        return "d2d"
    return "other"


def summarize_profile(profile) -> dict:
    """Memory copies in a profile: ``jax.profiler.ProfileData`` or anything with its shape.

    Device planes (``/device:GPU:*``) hold CUPTI's activity records: a memcpy
    event is named for its kind (MemcpyD2H, ...) and carries a
    ``memcpy_details`` stat (``kind_src:device kind_dst:pinned ...``). Host
    planes may hold the driver calls (``cuMemcpyDtoHAsync_v2``). Both are
    counted; ``d2h`` is the device count when the profile has device
    activity, else the host-call count.
    """
    device = Counter()
    host_calls = Counter()
    names: Counter = Counter()
    device_planes = []
    device_events = 0
    for plane in profile.planes:
        is_device = plane.name.startswith("/device:") and "CPU" not in plane.name.upper()
        if is_device:
            device_planes.append(plane.name)
        for line in plane.lines:
            for event in line.events:
                name = event.name
                if is_device:
                    device_events += 1
                    lowered = name.lower()
                    if "memcpy" not in lowered and "memcpy" not in line.name.lower():
                        continue
                    details = " ".join(str(v) for k, v in event.stats if "memcpy" in str(k).lower())
                    kind = _direction(name, details)
                    if kind is not None:
                        device[kind] += 1
                        names[name] += 1
                elif "memcpy" in name.lower() and re.search(r"dtoh|devicetohost|d2h", name, re.I):
                    host_calls["d2h"] += 1
                    names[name] += 1
    d2h = device["d2h"] if device_events else host_calls["d2h"]
    return {"d2h": d2h, "device_memcpy": dict(device), "host_memcpy_calls": dict(host_calls),
            "device_planes": device_planes, "device_events": device_events,
            "memcpy_event_names": dict(names.most_common(12))}


def profile_copies(run, *, label: str, log_dir: Path | None = None) -> dict:
    """Profile ``run()`` with jax.profiler and count its memory copies (:func:`summarize_profile`)."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{label}_") as tmp:
        with jax.profiler.trace(tmp):
            run()
        planes = sorted(Path(tmp).glob("plugins/profile/*/*.xplane.pb"))
        if not planes:
            raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {tmp}")
        summary = summarize_profile(ProfileData.from_file(str(planes[-1])))
        summary["xplane_bytes"] = planes[-1].stat().st_size
    return summary


def small_model(width: int):
    """A CNN made of jaxnorm.linen layers, and its training step (params, batch_stats) -> new, loss."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxnorm.linen as jnl

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(width, (3, 3))(x)
            x = jnl.GroupNorm(num_groups=8)(x)
            x = nn.relu(x)
            x = nn.Conv(width, (3, 3))(x)
            x = jnl.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
            x = jnl.InstanceNorm()(x)
            x = x.mean(axis=(1, 2))
            x = jnl.LayerNorm()(x)
            x = nn.relu(nn.Dense(width)(x))
            x = jnl.RMSNorm()(x)
            return nn.Dense(10)(x)

    net = Net()

    def step(state, x, y):
        params, stats = state

        def loss_fn(p):
            logits, updates = net.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
        return (params, new_stats), loss

    return net, step


def init_state(net, x, rng):
    """``(params, batch_stats)`` of the right shapes, drawn with NumPy.

    ``net.init`` would compile the initializers: seconds on a GPU, but tens of
    seconds on XLA:CPU, which a dry run cannot spend.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=True))

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            value = np.ones(leaf.shape)
        elif name in ("bias", "mean"):
            value = np.zeros(leaf.shape)
        else:  # kernels: fan-in scaled
            value = rng.standard_normal(leaf.shape) / math.sqrt(max(1, math.prod(leaf.shape[:-1])))
        return jnp.asarray(value, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return variables["params"], variables["batch_stats"]


def stage_host_sync(ctx: Context) -> dict:
    ctx.fault("host_sync")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    s = ctx.settings
    net, step_fn = small_model(s["width"])
    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + rng.standard_normal((s["batch"], s["image"], s["image"], 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, s["batch"]), jnp.int32)
    state = init_state(net, x, rng)
    step = jax.jit(step_fn)
    result: dict = {"model": f"CNN {s['batch']}x{s['image']}x{s['image']}x3, width {s['width']}: "
                             "GroupNorm, BatchNorm, InstanceNorm, LayerNorm, RMSNorm (jaxnorm.linen)",
                    "backend": jax.default_backend()}

    lowered = step.lower(state, x, y)
    result["stablehlo"] = count_stablehlo_ops(lowered.as_text())
    compiled = lowered.compile()
    result["hlo"] = count_hlo_ops(compiled.as_text())
    ctx.save(result)
    try:
        from jax import export

        exported = export.export(step, platforms=["cuda"])(state, x, y)
        result["export_cuda"] = count_stablehlo_ops(exported.mlir_module())
    except Exception as e:  # noqa: BLE001 - informative only
        result["export_cuda"] = {"error": _first_line(e)}
    ctx.save(result)

    step = compiled  # the executable counted above is the one profiled (and jit would compile it again)
    for _ in range(2):  # warm-up: first-run work stays out of the profile
        state, loss = step(state, x, y)
    jax.block_until_ready((state, loss))
    steps = s["profiled_steps"]

    def run_steps():
        nonlocal state
        loss = None
        for _ in range(steps):
            state, loss = step(state, x, y)
        jax.block_until_ready((state, loss))

    result["profile"] = profile_copies(run_steps, label="step")
    result["profile"]["steps"] = steps
    result["d2h_per_step"] = result["profile"]["d2h"] / steps
    ctx.save(result)

    # Positive controls: copies the profiler must see if the count above means anything.
    v = jax.device_put(jnp.arange(1 << 18, dtype=jnp.float32))
    jax.block_until_ready(v)
    controls = {}
    controls["device_get"] = profile_copies(lambda: jax.device_get(v), label="device_get")
    controls["device_get"]["expected_min"] = 1
    cond_fn = jax.jit(lambda a: lax.cond(a[0, 0] > a[1, 0], lambda b: jnp.sin(b) @ jnp.cos(b).T,
                                         lambda b: jnp.cos(b) @ jnp.sin(b).T, a))
    m = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
    jax.block_until_ready(cond_fn(m))
    controls["cond"] = profile_copies(lambda: jax.block_until_ready([cond_fn(m) for _ in range(3)]), label="cond")
    controls["cond"]["hlo_conditionals"] = count_hlo_ops(cond_fn.lower(m).compile().as_text())["conditional"]
    controls["cond"]["calls"] = 3
    result["controls"] = controls
    result["profiler_sees_d2h"] = controls["device_get"]["d2h"] >= 1
    notes = []
    if result["backend"] == "gpu" and controls["cond"]["hlo_conditionals"] and not controls["cond"]["d2h"]:
        notes.append("the profiler saw no copy for the lax.cond control although its program holds a "
                     "conditional: count the step's conditionals in the HLO, not its copies")
    if result["backend"] == "gpu" and not result["profile"]["device_events"]:
        notes.append("no device activity in the profile (CUPTI unavailable?): copies were read from host calls")
    result["notes"] = notes
    return result


def host_sync_verdict(result: dict | None) -> tuple[str, list[str]]:
    """pass / fail / inconclusive for the host-sync stage's result (only a GPU run can pass or fail)."""
    if not result:
        return "not run", []
    reasons = []
    hlo = result.get("hlo") or {}
    host_ops = {op: hlo.get(op, 0) for op in ("conditional", "while", "infeed", "outfeed", "send", "recv")}
    host_ops["host_callbacks"] = hlo.get("host_callbacks", 0)
    bad = {op: n for op, n in host_ops.items() if n}
    if bad:
        reasons.append("compiled step holds " + ", ".join(f"{n} {op}" for op, n in bad.items()))
    if result.get("backend") != "gpu":
        return "inconclusive", reasons + [f"backend {result.get('backend')}: not a GPU program, no GPU copies"]
    profile = result.get("profile")
    if profile is not None and profile.get("d2h"):
        reasons.append(f"{profile['d2h']} device-to-host copies in {profile['steps']} profiled steps")
    if reasons:
        return "fail", reasons
    if profile is None:
        return "inconclusive", ["the step was not profiled"]
    if not result.get("profiler_sees_d2h"):
        return "inconclusive", ["0 copies counted, but the profiler saw none in the device_get control either"]
    return "pass", list(result.get("notes") or [])


# ------------------------------------------------------------------ stage: timings


def stage_timings(ctx: Context) -> dict:
    ctx.fault("timings")
    import jax

    import bench_gpu_norms as bench
    from harness.gpu_timing import copy_bandwidth

    s = ctx.settings
    cases = bench.tiny_cases() if ctx.mode == "dry" else bench.anchor_cases()
    target_s = s["target_ms"] / 1e3
    result: dict = {"settings": {k: s[k] for k in ("reps", "target_ms", "copy_mib", "pool_mb")},
                    "cases": [c.label for c in cases], "rows": [], "skipped_rows": [], "row_errors": []}
    device = jax.devices()[0]
    result["gpu"] = {"device_kind": device.device_kind, "platform": device.platform}
    copy = copy_bandwidth(s["copy_mib"] * 2**20, reps=max(s["reps"], 5), target_s=target_s)
    result["copy_bandwidth"] = copy
    print(f"copy bandwidth {copy['tb_s']:.3f} TB/s ({s['copy_mib']} MiB float32 x*a, read+write)", flush=True)
    ctx.save(result)
    reasons = bench.Reasons()
    per_row = []
    for case in cases:
        estimate = 1.5 * max(per_row) if per_row else 0.0
        if ctx.remaining() < estimate + 2.0:
            result["skipped_rows"].append(case.label)
            continue
        t0 = time.monotonic()
        try:
            row = bench.run_case(case, reps=s["reps"], target_s=target_s, pool_mb=s["pool_mb"],
                                 copy_tb_s=copy["tb_s"], reasons=reasons)
            result["rows"].append(row)
            print(f"  {_row_line(row)}  ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - one row's failure (an OOM, say) leaves the others
            result["row_errors"].append({"label": case.label, "error": _first_line(e),
                                         "traceback": traceback.format_exc()[-2000:]})
            print(f"  {case.label}: {_first_line(e)}", flush=True)
        per_row.append(time.monotonic() - t0)
        result["unavailable"] = sorted(reasons.seen)
        ctx.save(result)
    result["unavailable"] = sorted(reasons.seen)
    return result


# ------------------------------------------------------------------ running stages

STAGE_FUNCTIONS = {"env": stage_env, "tests": stage_tests, "host_sync": stage_host_sync, "timings": stage_timings}
ISOLATED = {"env", "host_sync", "timings"}  # tests runs pytest in a process of its own anyway


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_main(args) -> int:
    """Entry point of a stage process: run one stage, write ``{status, result, error}``."""
    out = Path(args.stage_result)
    record = {"status": "failed", "result": None, "error": None, "traceback": None}

    def save(result):
        record["result"] = result
        _write_json_atomic(out, record)

    ctx = Context(args, args.stage_seconds or 60.0, save=save)
    try:
        result = STAGE_FUNCTIONS[args.run_stage](ctx)
        record.update(status="ok", result=result)
    except BaseException as e:  # noqa: BLE001 - recorded for the parent
        record.update(error=_first_line(e), traceback=traceback.format_exc()[-4000:])
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    _write_json_atomic(out, record)
    return 0 if record["status"] == "ok" else 1


def run_stage(name: str, args, seconds: float, log_dir: Path | None) -> dict:
    """Run one stage (in a fresh process when isolated); never raises."""
    entry = {k: None for k in STAGE_KEYS}
    entry["budget_s"] = round(seconds, 1)
    t0 = time.monotonic()
    log_path = log_dir / f"gpu_check_{name}.log" if log_dir else None
    print(f"== {name}: started, budget {seconds:.0f} s", flush=True)
    if args.isolate and name in ISOLATED:
        with tempfile.TemporaryDirectory(prefix="gpu_check_stage_") as tmp:
            result_path = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *_child_argv(args), "--run-stage", name,
                   "--stage-result", str(result_path), "--stage-seconds", f"{seconds:.1f}"]
            grace = min(KILL_GRACE_S, 0.5 + 0.25 * seconds)
            returncode, output, timed_out = run_logged(
                cmd, env=child_env(args, import_paths()), timeout=seconds + grace, log_path=log_path,
                prefix=f"[{name}] ", echo=_echo_filter(name))
            record = _read_json(result_path) or {}
        entry["returncode"] = returncode
        entry["result"] = record.get("result")
        entry["error"] = record.get("error")
        entry["traceback"] = record.get("traceback")
        if timed_out:
            entry["status"] = "timeout"
            entry["error"] = entry["error"] or f"killed after its budget of {seconds:.0f} s (+{grace:.1f} s)"
        elif record.get("status") == "ok":
            entry["status"] = "ok"
        elif record.get("error") is None:  # died (a signal, os._exit, a CUDA abort) without reporting why
            entry["status"] = "crashed"
            tail = output.strip().splitlines()[-5:]
            entry["error"] = (f"the stage process exited with status {returncode} and "
                              f"{'wrote only partial results' if record else 'wrote no result'}"
                              + (": " + " | ".join(tail) if tail else ""))
        else:
            entry["status"] = "failed"
    else:
        partial: dict = {}
        ctx = Context(args, seconds, save=lambda r: partial.update(result=r))
        ctx.log_dir = log_dir
        try:
            entry["result"] = STAGE_FUNCTIONS[name](ctx)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one stage's failure never stops the others
            entry.update(status="failed", error=_first_line(e), traceback=traceback.format_exc()[-4000:],
                         result=partial.get("result"))
            print(traceback.format_exc(), flush=True)
    tests = entry["result"] if name == "tests" and entry["status"] == "ok" else {}
    if tests.get("timed_out"):
        entry["status"] = "timeout"
        entry["error"] = tests.get("note")
    elif tests.get("returncode") not in (None, 0, 1, 5):  # pytest itself failed: usage, internal error
        entry["status"] = "failed"
        entry["error"] = (tests.get("note") or "")[:1000]
    entry["seconds"] = round(time.monotonic() - t0, 1)
    entry["log"] = str(log_path) if log_path and log_path.exists() else None
    print(f"== {name}: {entry['status']} in {entry['seconds']:.0f} s"
          + (f" -- {entry['error']}" if entry["error"] else ""), flush=True)
    return entry


def _child_argv(args) -> list[str]:
    argv = []
    if args.quick:
        argv.append("--quick")
    if args.dry_run:
        argv.append("--dry-run")
    if args.reps is not None:
        argv += ["--reps", str(args.reps)]
    if args.tests:
        argv += ["--tests", args.tests]
    for stage, kind in args.inject_fault:
        argv += ["--inject-fault", f"{stage}:{kind}"]
    return argv


# ------------------------------------------------------------------ verdict and JSON


def tests_verdict(result: dict | None, status: str | None) -> tuple[str, list[str]]:
    if not result:
        return "not run", []
    counts = result["counts"]
    reasons = []
    if counts["failed"] or counts["errors"]:
        reasons.append(f"{counts['failed']} failed, {counts['errors']} errors")
    if reasons:
        return "fail", reasons
    if status != "ok" or not result.get("complete"):
        return "inconclusive", [result.get("note") or f"stage {status}"]
    if not counts["passed"]:
        return "inconclusive", ["no test ran (all skipped: no GPU?)"]
    return "pass", []


def timings_verdict(entry: dict | None) -> tuple[str, list[str]]:
    result = (entry or {}).get("result")
    if not result:
        return "not run", []
    rows = result.get("rows", [])
    reasons = []
    if not rows:
        return "inconclusive", ["no timing rows"]
    flagged = [r["label"] for r in rows if r.get("error_flag")]
    if flagged:
        reasons.append("triton differs from xla beyond tolerance: " + ", ".join(flagged))
    missing = [r["label"] for r in rows if "triton" in r.get("unavailable", {})]
    if missing:
        reasons.append(f"triton n/a in {len(missing)}/{len(rows)} rows")
    if result.get("skipped_rows") or result.get("row_errors") or entry.get("status") != "ok":
        reasons.append("not every row ran")
    return ("fail" if flagged else "inconclusive" if reasons else "pass"), reasons


def verdict(stages: dict) -> dict:
    tests = stages.get("tests") or {}
    t_verdict, t_reasons = tests_verdict(tests.get("result"), tests.get("status"))
    h_verdict, h_reasons = host_sync_verdict((stages.get("host_sync") or {}).get("result"))
    m_verdict, m_reasons = timings_verdict(stages.get("timings"))
    env = (stages.get("env") or {}).get("result") or {}
    candidate = (env.get("backend") == "gpu" and env.get("triton_launcher") == "gpu"
                 and t_verdict == "pass" and m_verdict == "pass")
    why = []
    if env.get("backend") != "gpu":
        why.append("not run on a GPU")
    elif env.get("triton_launcher") != "gpu":
        why.append("jax_triton unavailable: the Triton kernels did not run")
    why += [f"tests: {r}" for r in t_reasons] + [f"timings: {r}" for r in m_reasons]
    return {"tests": t_verdict, "host_sync": h_verdict, "timings": m_verdict,
            "triton_default_candidate": candidate,
            "reasons": {"tests": t_reasons, "host_sync": h_reasons, "timings": m_reasons,
                        "triton_default_candidate": [] if candidate else why}}


# Stage results that the JSON holds at its top level instead (where the notebook reads them).
HOISTED = {"env": ("machine", "gpu"), "timings": ("copy_bandwidth", "rows", "unavailable", "skipped_rows", "gpu")}


def assemble(args, stages: dict, *, started: str, t0: float, command: str, finished: bool) -> dict:
    env = (stages.get("env") or {}).get("result") or {}
    timing = (stages.get("timings") or {}).get("result") or {}
    v = verdict(stages)
    stages = {name: {**entry, "result": {k: val for k, val in entry["result"].items() if k not in HOISTED[name]}}
              if name in HOISTED and isinstance(entry.get("result"), dict) else entry
              for name, entry in stages.items()}
    return {
        "schema": SCHEMA,
        "command": command,
        "started": started,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds") if finished else None,
        "wall_s": round(time.monotonic() - t0, 1),
        "mode": mode_of(args),
        "settings": {**settings_of(args), "stages": list(args.stages), "budgets_s": stage_budgets(args),
                     "isolate": args.isolate, "l2_threshold_mb": 50, "mb": "1e6 bytes",
                     "ideal_bytes": "fwd 2*E*b (read x, write y); fwd_bwd 5*E*b (+ read x, dy, write dx)"},
        "machine": env.get("machine") or {"platform": platform.platform(), "python": platform.python_version(),
                                          "note": "env stage did not report"},
        "gpu": env.get("gpu") or timing.get("gpu") or {},
        "stages": stages,
        "verdict": v,
        "copy_bandwidth": timing.get("copy_bandwidth") or {},
        "rows": timing.get("rows") or [],
        "unavailable": timing.get("unavailable") or [],
        "skipped_rows": timing.get("skipped_rows") or [],
    }


# ------------------------------------------------------------------ summary


CELL = 10  # "2.50  83%": TB/s and % of the copy bandwidth


def _pct(perf: dict | None) -> str:
    if not perf:
        return f"{'n/a':^{CELL}s}"
    frac = perf.get("frac_copy")
    return f"{perf['tb_s']:5.2f} {100 * frac:3.0f}%" if frac is not None else f"{perf['tb_s']:5.2f}".ljust(CELL)


def _row_line(row: dict) -> str:
    impls = ("triton", "xla", "flax")

    def cells(mode):
        return " ".join(_pct(row[mode].get(k)) if k in row["implementations"] else f"{'-':^{CELL}s}" for k in impls)

    err = (row.get("errors", {}).get("triton_vs_xla") or {}).get("max")
    err_text = "n/a" if err is None else f"{err:.0e}" + ("!" if row.get("error_flag") else "")
    label = row["label"] + (" [L2]" if row.get("regime") == "l2" else "")
    return f"{label:36s} {row['size_mb']:6.1f} | {cells('fwd')} | {cells('fwd_bwd')} | {err_text}"


def _table_header() -> list[str]:
    names = " ".join(f"{k:>{CELL}s}" for k in ("triton", "xla", "flax"))
    width = len(names)
    return [f"{'':36s} {'':6s} | {'forward':^{width}s} | {'forward+backward':^{width}s} |",
            f"{'row':36s} {'MB':>6s} | {names} | {names} | err t-x"]


def _stage_text(name: str, entry: dict, payload: dict) -> str:
    r = entry.get("result") or {}
    if name == "env" and r:
        v = (payload.get("machine") or {}).get("versions", {})
        return (f"{r.get('backend')} {(payload.get('gpu') or {}).get('device_kind', '?')}; jax {v.get('jax', '?')}, "
                f"triton {v.get('triton', '-')}, jax-triton {v.get('jax-triton', '-')}; "
                f"kernels launcher: {r.get('triton_launcher')}")
    if name == "tests" and r.get("counts"):
        c = r["counts"]
        text = ", ".join(f"{c[k]} {k}" for k in COUNT_KEYS if c[k]) or "no tests"
        return text + ("" if r.get("complete") else f" (cut short after {r.get('tests_seen')} tests)")
    if name == "host_sync" and r:
        hlo = r.get("hlo") or {}
        parts = [f"HLO conditional {hlo.get('conditional', '?')}, while {hlo.get('while', '?')}, "
                 f"callbacks {hlo.get('host_callbacks', '?')}"]
        if "profile" in r:
            ctl = (r.get("controls") or {}).get("device_get", {}).get("d2h", "?")
            parts.append(f"D2H copies {r['profile']['d2h']} in {r['profile']['steps']} steps (control {ctl})")
        exp = r.get("export_cuda") or {}
        if "stablehlo.case" in exp:
            parts.append(f"cuda export: case {exp['stablehlo.case']}, while {exp['stablehlo.while']}")
        return "; ".join(parts)
    if name == "timings" and r:
        copy = (payload.get("copy_bandwidth") or {}).get("tb_s")
        text = f"{len(payload.get('rows', []))}/{len(r.get('cases', []))} rows"
        if copy:
            text += f", copy {copy:.2f} TB/s"
        if payload.get("skipped_rows"):
            text += f", {len(payload['skipped_rows'])} skipped for time"
        if r.get("row_errors"):
            text += f", {len(r['row_errors'])} failed"
        return text
    return ""


def format_summary(payload: dict, json_paths: list[str]) -> str:
    """One screen: stages, failures, the timing table, the verdict, where the JSON went."""
    gpu = payload.get("gpu") or {}
    lines = [f"jaxnorm GPU check ({payload['mode']}) on {gpu.get('device_kind', '?')} ({gpu.get('platform', '?')}), "
             f"{payload['started']}, {payload['wall_s']:.0f} s"]
    lines.append(f"{'stage':10s} {'status':8s} {'time':>6s} {'budget':>6s}  result")
    for name, entry in payload["stages"].items():
        lines.append(f"{name:10s} {entry['status']:8s} {entry['seconds'] or 0:5.0f}s {entry['budget_s'] or 0:5.0f}s  "
                     f"{_stage_text(name, entry, payload)}")
        if entry.get("error") and entry["status"] != "ok":
            lines.append(f"{'':10s} error: {entry['error'][:150]}")
    tests = (payload["stages"].get("tests") or {}).get("result") or {}
    for file, counts in list((tests.get("by_file") or {}).items())[:4]:
        lines.append(f"  {file}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for failure in tests.get("failures", [])[:8]:
        lines.append(f"  {failure[:150]}")
    if len(tests.get("failures", [])) > 8:
        lines.append(f"  ... {len(tests['failures']) - 8} more failures in the JSON and gpu_check_tests.log")
    rows = payload.get("rows") or []
    if rows:
        copy = payload["copy_bandwidth"].get("tb_s") or float("nan")
        lines.append(f"timings: achieved TB/s and % of copy bandwidth ({copy:.2f} TB/s), median; "
                     f"[L2]: x < 50 MB, launch-bound")
        lines += _table_header()
        lines += [_row_line(r) for r in rows]
    for label in payload.get("skipped_rows", []):
        lines.append(f"{label:36s} skipped: no time left in the stage's budget")
    for reason in payload.get("unavailable", [])[:3]:
        lines.append(f"  n/a: {reason[:150]}")
    v = payload["verdict"]
    lines.append(f"verdict: tests {v['tests']}, host sync {v['host_sync']}, timings {v['timings']}; "
                 f"Triton as default candidate: {'yes' if v['triton_default_candidate'] else 'no'}")
    for key in ("host_sync", "triton_default_candidate"):
        for reason in v["reasons"][key][:3]:
            lines.append(f"  {key}: {reason[:150]}")
    lines.append("JSON: " + ", ".join(json_paths))
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def json_targets(args, backend: str | None) -> list[Path]:
    """Where the JSON goes: ``--json``, else benchmarks/results (only when the run is on a GPU), and ``--out``."""
    targets = []
    if args.json:
        targets.append(Path(args.json))
    elif not args.dry_run and backend == "gpu":
        targets.append(DEFAULT_JSON)
    if args.out:
        targets.append(Path(args.out) / JSON_NAME)
    return targets


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    use_import_paths()
    if args.run_stage:
        if args.dry_run:
            os.environ["JAX_PLATFORMS"] = "cpu"
        return stage_main(args)
    if args.dry_run and "jax" not in sys.modules:
        os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    command = "python3 benchmarks/gpu_check.py " + shlex.join(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    budgets = stage_budgets(args)
    total = sum(budgets.values())
    log_dir = Path(args.out) if args.out else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
        for name in STAGES:  # logs of an earlier run in the same folder would mix in
            (log_dir / f"gpu_check_{name}.log").unlink(missing_ok=True)
    fallback = None
    if not json_targets(args, "gpu"):  # --dry-run without --out: a temporary folder
        fallback = Path(tempfile.mkdtemp(prefix="gpu_check_dry_"))
        log_dir = fallback

    stages: dict = {}
    targets: list[Path] = []

    def write(finished=False):
        nonlocal targets
        backend = ((stages.get("env") or {}).get("result") or {}).get("backend")
        targets = json_targets(args, backend) or ([fallback / JSON_NAME] if fallback else [])
        if not targets:  # a full run off a GPU without --out: nothing to write
            targets = [Path(tempfile.gettempdir()) / JSON_NAME]
        payload = assemble(args, stages, started=started, t0=t0, command=command, finished=finished)
        for path in targets:
            try:
                _write_json_atomic(path, payload)
            except OSError as e:
                print(f"could not write {path}: {_first_line(e)}", flush=True)
        return payload

    print(f"jaxnorm GPU check, {mode_of(args)} mode: stages {', '.join(args.stages)}; budget {total:.0f} s",
          flush=True)
    no_gpu = False
    for name in args.stages:
        left = total - (time.monotonic() - t0)
        seconds = min(budgets[name], left)
        if no_gpu:
            stages[name] = {**{k: None for k in STAGE_KEYS}, "status": "skipped", "seconds": 0,
                            "budget_s": budgets[name], "error": "no GPU: rerun with --dry-run to test the check"}
        elif left < MIN_STAGE_S:
            stages[name] = {**{k: None for k in STAGE_KEYS}, "status": "skipped", "seconds": 0,
                            "budget_s": budgets[name], "error": f"only {left:.0f} s of the total budget left"}
        else:
            stages[name] = run_stage(name, args, seconds, log_dir)
        if name == "env" and not args.dry_run:
            backend = (stages[name].get("result") or {}).get("backend")
            no_gpu = backend is not None and backend != "gpu"
        write()
    payload = write(finished=True)
    print("\n" + format_summary(payload, [str(p) for p in targets]), flush=True)
    if no_gpu:
        print(f"no GPU here (jax backend {stages['env']['result']['backend']!r}); "
              f"use --dry-run to exercise the check on the CPU", flush=True)
        return 2
    failed = any(e["status"] != "ok" for e in stages.values())
    v = payload["verdict"]
    return 1 if failed or "fail" in (v["tests"], v["host_sync"], v["timings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
