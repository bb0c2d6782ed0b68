"""Time jaxnorm's Triton kernels against its XLA path and flax.linen on a GPU.

One run on an NVIDIA GPU (H100/H200) measures:

1. Device copy bandwidth: a jitted ``x * a`` over 1 GiB of float32 (``a`` a
   run-time scalar, so XLA can neither fold nor elide it), bytes read +
   written over the median time of many repetitions. This is the practical
   ceiling the norms are compared against.
2. Forward and forward+backward, under ``jax.jit``, of
   - GroupNorm (G=32, eps 1e-5): jaxnorm ``implementation="triton"`` and
     ``"xla"``, and ``flax.linen.GroupNorm``, NHWC; an NCHW row for jaxnorm
     (``channel_axis=1``; flax has no counterpart); a ``silu(GroupNorm(x))``
     row for every implementation (Stable Diffusion's pattern). Shapes: the
     Stable Diffusion UNet (float32 and bfloat16) and VAE (float32).
   - LayerNorm (eps 1e-5) and RMSNorm (eps 1e-6) over the last axis, jaxnorm
     triton/xla vs ``flax.linen.LayerNorm`` / ``RMSNorm``, LLM activations
     (tokens × hidden) in bfloat16.
   Flax modules get the same scale and bias in their own params layout, and
   ``dtype=x.dtype`` so that, like jaxnorm, they return x's dtype (left to
   its default, flax returns float32 for bfloat16 x, writing twice the bytes).
   Forward+backward is ``y, vjp = jax.vjp(f, x, scale, bias)`` then
   ``vjp(w)`` for a fixed random w, returning y and the gradients: the
   gradients of ``loss = sum(y * w)`` w.r.t. x, scale and bias, with y kept
   as an output as in training (the next layer consumes it).

Timing: JAX dispatches asynchronously. After warm-up (compilation and a few
calls), each sample is a batch of k back-to-back calls ended by one
``block_until_ready``, divided by k; k is chosen per function so a batch
lasts >= 20 ms. The median (and min) over R repetitions is reported, and the
implementations are interleaved (each repetition runs every implementation's
batch in turn) so that drift hits all alike. Below 64 MB the calls rotate
among several input buffers (256 MB in all), so that the data is not simply
re-read from the 50 MB L2 cache. See ``benchmarks/harness/gpu_timing.py``.

Byte model (E elements of b bytes; per-channel terms ignored):
forward 2·E·b (read x, write y); forward+backward 5·E·b (the forward's 2,
plus read x and dy, write dx). Achieved bandwidth = ideal bytes / median
time, printed in TB/s and as a fraction of the measured copy bandwidth.
Rows whose x is below 50 MB are L2-resident in practice: launch overhead,
host dispatch and grid occupancy dominate, so they are tabulated apart.

Correctness: triton's y and gradients against xla's (relative L2 error, in
float32), flagged above 1e-5 for float32 inputs and 1e-2 for bfloat16.
If ``implementation="triton"`` raises (no GPU, kernels not installed, shape
unsupported), its columns read "n/a" and the reason is printed once.

    python benchmarks/bench_gpu_norms.py [--quick] [--out benchmarks/results/norms_gpu.json]

``--quick`` runs two small shapes with few repetitions (a CPU smoke test);
``--anchors`` only the anchor shapes (bf16 NHWC GroupNorm and LLM
LayerNorm/RMSNorm: what ``benchmarks/gpu_check.py`` times, through
:func:`anchor_cases` and :func:`run_case` of this file); ``--only REGEX``
keeps the rows whose label matches; ``--reps`` and ``--target-ms`` change
the repetitions and the batch duration. Without jaxnorm installed (the lent
GPU machines), run ``benchmarks/gpu_check.py`` instead, which imports this
tree's jaxnorm and kernels itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import math
import os
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jaxnorm
from harness.gpu_timing import Timing, achieved, copy_bandwidth, ideal_bytes, interleaved_batches
from jaxnorm.bench.progress import Progress
from jaxnorm.bench.table import write_json

MB = 1e6
L2_MB = 50  # H100/H200 L2: rows below are reported as L2-resident
ROTATE_BELOW_MB = 64  # below this, calls rotate among several inputs
ROTATE_POOL_MB = 256  # total size of the rotated inputs
MAX_BUFFERS = 512
IMPLS = ("triton", "xla", "flax")
ERROR_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2}
SHORT_DTYPE = {"float32": "f32", "bfloat16": "bf16"}
GROUPS = 32

# Stable Diffusion UNet GroupNorm activations (N, H, W, C), float32 and bf16.
SD_UNET = [
    (2, 64, 64, 320), (2, 32, 32, 640), (2, 16, 16, 1280),
    (16, 64, 64, 320), (16, 32, 32, 640), (16, 16, 16, 1280),
    (2, 8, 8, 1280),
]
# Stable Diffusion VAE decoder activations, float32.
VAE = [(1, 256, 256, 512), (1, 512, 512, 128)]
# LLM activations (tokens, hidden), bf16.
LLM = [(4096, 4096), (8192, 8192), (32768, 4096), (16384, 8192)]
# The anchor shapes of issue 21 / ANCHORS.md (what benchmarks/gpu_check.py times):
# Stable Diffusion UNet GroupNorm, bf16 NHWC, and LLM LayerNorm/RMSNorm, bf16.
ANCHOR_CNN = [(2, 64, 64, 320), (2, 32, 32, 640), (2, 16, 16, 1280), (2, 8, 8, 1280)]
ANCHOR_LLM = [(8192, 4096), (4096, 8192)]
# --quick: one small CNN shape and one small token shape.
QUICK_CNN = (2, 16, 16, 128)
QUICK_TOKENS = (512, 1024)


# ---------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: a normalization at one shape and dtype.

    ``impls`` maps an implementation's name to ``apply(x, scale, bias) -> y``
    (bias is None and unused when ``has_bias`` is False); an implementation
    left out has no counterpart (flax on NCHW).
    """

    family: str
    layout: str
    shape: tuple[int, ...]
    dtype: str
    param_shape: tuple[int, ...]
    impls: dict[str, Callable]
    has_bias: bool = True

    @property
    def label(self) -> str:
        dims = "x".join(map(str, self.shape))
        return f"{self.family} {self.layout} {dims} {SHORT_DTYPE.get(self.dtype, self.dtype)}"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * jnp.dtype(self.dtype).itemsize


def _flax(name: str, has_bias: bool = True, **kwargs) -> Callable:
    """``apply(x, scale, bias)`` running ``flax.linen.<name>`` with our params."""

    def apply(x, scale, bias):
        import flax.linen as nn

        params = {"scale": scale, "bias": bias} if has_bias else {"scale": scale}
        return getattr(nn, name)(dtype=x.dtype, **kwargs).apply({"params": params}, x)

    return apply


def _then_silu(apply: Callable) -> Callable:
    return lambda x, scale, bias: jax.nn.silu(apply(x, scale, bias))


def group_norm_case(nhwc, dtype, *, layout="NHWC", silu=False) -> Case:
    """GroupNorm(G=32) on an (N, H, W, C) shape, laid out NHWC or NCHW."""
    n, *spatial, c = nhwc
    axis, shape = (-1, tuple(nhwc)) if layout == "NHWC" else (1, (n, c, *spatial))

    def jaxnorm_impl(impl):
        return lambda x, s, b: jaxnorm.group_norm(
            x, s, b, num_groups=GROUPS, channel_axis=axis, epsilon=1e-5, implementation=impl)

    impls = {"triton": jaxnorm_impl("triton"), "xla": jaxnorm_impl("xla")}
    if layout == "NHWC":
        impls["flax"] = _flax("GroupNorm", num_groups=GROUPS, epsilon=1e-5)
    if silu:
        impls = {k: _then_silu(f) for k, f in impls.items()}
    family = "group_norm+silu" if silu else "group_norm"
    return Case(family, layout, shape, dtype, (c,), impls)


def layer_norm_case(shape, dtype) -> Case:
    """LayerNorm over the last axis, eps 1e-5."""

    def jaxnorm_impl(impl):
        return lambda x, s, b: jaxnorm.layer_norm(x, s, b, axis=-1, epsilon=1e-5, implementation=impl)

    impls = {"triton": jaxnorm_impl("triton"), "xla": jaxnorm_impl("xla"),
             "flax": _flax("LayerNorm", epsilon=1e-5)}
    return Case("layer_norm", "tokens", tuple(shape), dtype, (shape[-1],), impls)


def rms_norm_case(shape, dtype) -> Case:
    """RMSNorm over the last axis, eps 1e-6 (no bias)."""

    def jaxnorm_impl(impl):
        return lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=1e-6, implementation=impl)

    impls = {"triton": jaxnorm_impl("triton"), "xla": jaxnorm_impl("xla"),
             "flax": _flax("RMSNorm", has_bias=False, epsilon=1e-6)}
    return Case("rms_norm", "tokens", tuple(shape), dtype, (shape[-1],), impls, has_bias=False)


def group_norm_cases(shape, dtype) -> list[Case]:
    """NHWC, NCHW and NHWC+SiLU GroupNorm rows for one shape."""
    return [group_norm_case(shape, dtype), group_norm_case(shape, dtype, layout="NCHW"),
            group_norm_case(shape, dtype, silu=True)]


def full_cases() -> list[Case]:
    cases = []
    for dtype in ("float32", "bfloat16"):
        for shape in SD_UNET:
            cases += group_norm_cases(shape, dtype)
    for shape in VAE:
        cases += group_norm_cases(shape, "float32")
    for shape in LLM:
        cases += [layer_norm_case(shape, "bfloat16"), rms_norm_case(shape, "bfloat16")]
    return cases


def anchor_cases() -> list[Case]:
    """The anchor shapes, bf16, NHWC GroupNorm and LayerNorm/RMSNorm, interleaved so
    that a run cut short by its time budget still has rows of every family."""
    gn = [group_norm_case(s, "bfloat16") for s in ANCHOR_CNN]
    tokens = [c for s in ANCHOR_LLM for c in (layer_norm_case(s, "bfloat16"), rms_norm_case(s, "bfloat16"))]
    return [tokens[0], tokens[1], gn[0], gn[1], tokens[2], tokens[3], gn[2], gn[3]]


def tiny_cases() -> list[Case]:
    """One CPU-sized row (``gpu_check.py --dry-run``: the control flow, not the numbers)."""
    return [layer_norm_case((64, 256), "bfloat16")]


def quick_cases() -> list[Case]:
    return group_norm_cases(QUICK_CNN, "float32") + [
        layer_norm_case(QUICK_TOKENS, "bfloat16"), rms_norm_case(QUICK_TOKENS, "bfloat16")]


# ------------------------------------------------------- inputs and functions


@dataclasses.dataclass
class Inputs:
    """Rotating pools of x and cotangent w (same count), plus scale and bias."""

    xs: list
    ws: list
    scale: jax.Array
    bias: jax.Array | None


def make_inputs(case: Case, *, pool_mb: float, seed: int = 0) -> Inputs:
    """Random N(0, 1) inputs on the device; several copies when x is small."""
    count = 1
    if case.nbytes < ROTATE_BELOW_MB * MB:
        count = max(1, min(MAX_BUFFERS, math.ceil(pool_mb * MB / case.nbytes)))
    dtype = jnp.dtype(case.dtype)
    normal = jax.jit(lambda key: jax.random.normal(key, case.shape, jnp.float32).astype(dtype))
    keys = jax.random.split(jax.random.key(seed), 2 * count + 2)
    xs = [normal(k) for k in keys[:count]]
    ws = [normal(k) for k in keys[count:2 * count]]
    scale = 1 + 0.1 * jax.random.normal(keys[-2], case.param_shape, jnp.float32)
    bias = 0.1 * jax.random.normal(keys[-1], case.param_shape, jnp.float32) if case.has_bias else None
    return Inputs(xs, ws, scale, bias)


def forward_fn(apply: Callable) -> Callable:
    return jax.jit(apply)


def fwd_bwd_fn(apply: Callable, has_bias: bool) -> Callable:
    """jit of ``(x, scale, bias, w) -> (y, (dx, dscale[, dbias]))``: the
    gradients of ``sum(y * w)``, with y returned as training would use it."""

    def f(x, scale, bias, w):
        if has_bias:
            y, pull = jax.vjp(apply, x, scale, bias)
        else:
            y, pull = jax.vjp(lambda x, s: apply(x, s, None), x, scale)
        return y, pull(w.astype(y.dtype))

    return jax.jit(f)


def try_call(fn: Callable, *args):
    """``(output, None)``, or ``(None, reason)`` if compiling or running fails."""
    try:
        return jax.block_until_ready(fn(*args)), None
    except Exception as e:  # noqa: BLE001 - any failure makes the column n/a
        first_line = (str(e).strip().splitlines() or [""])[0]
        return None, f"{type(e).__name__}: {first_line}"


@jax.jit
def _rel_l2(a, b):
    d = a.astype(jnp.float32) - b.astype(jnp.float32)
    num = jnp.sqrt(jnp.sum(d * d))
    den = jnp.sqrt(jnp.sum(jnp.square(b.astype(jnp.float32))))
    return jnp.where(den > 0, num / den, num)


def compare(y, grads, y_ref, grads_ref, has_bias: bool) -> dict | None:
    """Relative L2 errors of y, dx, dscale (, dbias) against the reference."""
    names = ("dx", "dscale", "dbias") if has_bias else ("dx", "dscale")
    errors = {}
    if y is not None and y_ref is not None:
        errors["y"] = float(_rel_l2(y, y_ref))
    if grads is not None and grads_ref is not None:
        errors |= {n: float(_rel_l2(g, r)) for n, g, r in zip(names, grads, grads_ref)}
    if not errors:
        return None
    return errors | {"max": max(errors.values())}


# ------------------------------------------------------------------ one row


class Reasons:
    """Why an implementation is n/a; each distinct reason printed once."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def note(self, impl: str, reason: str) -> None:
        key = f"{impl}: {reason}"
        if key not in self.seen:
            self.seen[key] = reason
            print(f"[{impl} n/a] {reason}", flush=True)


def _rotating(fn, inputs: Inputs, with_w: bool) -> Callable[[int], object]:
    xs, ws, s, b = inputs.xs, inputs.ws, inputs.scale, inputs.bias
    n = len(xs)
    if with_w:
        return lambda i: fn(xs[i % n], s, b, ws[i % n])
    return lambda i: fn(xs[i % n], s, b)


def _performance(t: Timing | None, nbytes: int, copy_tb_s: float) -> dict | None:
    if t is None:
        return None
    return t.to_json() | achieved(t.median_s, nbytes, copy_tb_s)


def _ratio(num: dict | None, den: dict | None) -> float | None:
    return num["ms"] / den["ms"] if num and den else None


def run_case(case: Case, *, reps: int, target_s: float, pool_mb: float,
             copy_tb_s: float, reasons: Reasons) -> dict:
    """Check and time every implementation of ``case``; return a JSON-ready row."""
    inputs = make_inputs(case, pool_mb=pool_mb)
    x0, w0 = inputs.xs[0], inputs.ws[0]
    fwd, fb, y0, g0, status = {}, {}, {}, {}, {}
    for name, apply in case.impls.items():
        f, g = forward_fn(apply), fwd_bwd_fn(apply, case.has_bias)
        y, why_f = try_call(f, x0, inputs.scale, inputs.bias)
        out, why_b = try_call(g, x0, inputs.scale, inputs.bias, w0)
        for why in {why_f, why_b} - {None}:
            reasons.note(name, why)
        status[name] = why_f or why_b
        if y is not None:
            fwd[name], y0[name] = f, y
        if out is not None:
            fb[name], g0[name] = g, out[1]
        del y, out  # only the outputs kept for the comparison stay alive

    tolerance = ERROR_TOLERANCE.get(case.dtype, 1e-2)
    err_triton = compare(y0.get("triton"), g0.get("triton"), y0.get("xla"), g0.get("xla"), case.has_bias)
    err_flax = compare(y0.get("flax"), g0.get("flax"), y0.get("xla"), g0.get("xla"), case.has_bias)
    del y0, g0

    copy = jax.jit(lambda x, a: x * a)
    one = jnp.asarray(1, case.dtype)
    fwd_names = ["copy", *fwd]
    fwd_t = interleaved_batches(
        [_rotating(lambda x, s, b: copy(x, one), inputs, False)]
        + [_rotating(fwd[k], inputs, False) for k in fwd], reps=reps, target_s=target_s)
    fb_t = interleaved_batches([_rotating(fb[k], inputs, True) for k in fb], reps=reps, target_s=target_s)
    fwd_t, fb_t = dict(zip(fwd_names, fwd_t)), dict(zip(fb, fb_t))

    sizes = ideal_bytes(case.shape, case.dtype)
    e = sizes["elements"]
    ideal = {"fwd": sizes["fwd"], "fwd_bwd": sizes["fwd_bwd"]}
    perf = {
        "fwd": {k: _performance(fwd_t.get(k), ideal["fwd"], copy_tb_s) for k in case.impls},
        "fwd_bwd": {k: _performance(fb_t.get(k), ideal["fwd_bwd"], copy_tb_s) for k in case.impls},
    }
    size_mb = case.nbytes / MB
    copy_same = fwd_t["copy"]
    return {
        "label": case.label,
        "family": case.family,
        "layout": case.layout,
        "shape": list(case.shape),
        "dtype": case.dtype,
        "elements": e,
        "size_mb": size_mb,
        "regime": "hbm" if size_mb >= L2_MB else "l2",
        "rotating_buffers": len(inputs.xs),
        "ideal_bytes": ideal,
        "copy_same_size": copy_same.to_json() | {"tb_s": achieved(copy_same.median_s, 2 * case.nbytes, None)["tb_s"]},
        "implementations": list(case.impls),
        "unavailable": {k: v for k, v in status.items() if v is not None},
        **perf,
        "ratios": {
            mode: {
                "triton/xla": _ratio(perf[mode].get("triton"), perf[mode].get("xla")),
                "triton/flax": _ratio(perf[mode].get("triton"), perf[mode].get("flax")),
                "xla/flax": _ratio(perf[mode].get("xla"), perf[mode].get("flax")),
            }
            for mode in ("fwd", "fwd_bwd")
        },
        "errors": {"triton_vs_xla": err_triton, "flax_vs_xla": err_flax},
        "error_tolerance": tolerance,
        "error_flag": None if err_triton is None else err_triton["max"] > tolerance,
    }


# ------------------------------------------------------------ output, main


def versions() -> dict:
    """Versions beyond :func:`machine_info`'s, and whether jax_triton imports."""
    out = {}
    for name in ("jaxnorm", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    for module in ("triton", "jax_triton"):
        try:
            out[f"{module} (imported)"] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - jax_triton raises ImportError without a GPU jaxlib
            out[f"{module} (imported)"] = f"not importable: {type(e).__name__}"
    return out


def _cell(row: dict, mode: str, impl: str, fmt: Callable[[dict], str]) -> str:
    if impl not in row["implementations"]:
        return "-"
    perf = row[mode].get(impl)
    return fmt(perf) if perf else "n/a"


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def format_table(rows: list[dict], mode: str) -> str:
    """Fixed-width table of one mode (``fwd`` or ``fwd_bwd``)."""
    header = ["case", "MB", "tri ms", "xla ms", "flax ms", "t/x", "t/f",
              "tri TB/s", "xla TB/s", "flax TB/s", "err t-x"]
    error_key = ("y",) if mode == "fwd" else ("dx", "dscale", "dbias")
    table = [header]
    for row in rows:
        ms = [_cell(row, mode, k, lambda p: f"{p['ms']:.3f}") for k in IMPLS]
        bw = [_cell(row, mode, k, lambda p: f"{p['tb_s']:.3g} {100 * p['frac_copy']:3.0f}%") for k in IMPLS]
        errors = row["errors"]["triton_vs_xla"] or {}
        errs = [errors[k] for k in error_key if k in errors]
        err = f"{max(errs):.1e}" if errs else "n/a"
        if errs and max(errs) > row["error_tolerance"]:
            err += "!"
        ratios = row["ratios"][mode]
        t_f = _num(ratios["triton/flax"], "{:.2f}") if "flax" in row["implementations"] else "-"
        table.append([row["label"], f"{row['size_mb']:.1f}", *ms, _num(ratios["triton/xla"], "{:.2f}"), t_f, *bw, err])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_tables(rows: list[dict], copy: dict) -> None:
    titles = {"fwd": "forward", "fwd_bwd": "forward+backward"}
    regimes = {"hbm": f"x >= {L2_MB} MB (HBM-bound)", "l2": f"x < {L2_MB} MB (L2-resident: launch/occupancy-bound)"}
    for mode, title in titles.items():
        for regime, what in regimes.items():
            selected = [r for r in rows if r["regime"] == regime]
            if selected:
                print(f"\n{title}, {what}")
                print(format_table(selected, mode))
    print(
        f"\nms: median per call (batches of k calls, interleaved). t/x, t/f: triton/xla, triton/flax\n"
        f"(< 1: triton faster). TB/s: ideal bytes (fwd 2*E*b, fwd+bwd 5*E*b) / time, and % of the\n"
        f"measured copy bandwidth {copy['tb_s']:.3g} TB/s. err t-x: relative L2 error triton vs xla\n"
        f"(fwd: y; fwd+bwd: max of dx, dscale, dbias), '!' above 1e-5 (f32) / 1e-2 (bf16).\n"
        f"n/a: the implementation failed (reason printed above); -: no counterpart."
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes, few reps (CPU smoke test)")
    parser.add_argument("--anchors", action="store_true",
                        help="only the anchor shapes (bf16 GroupNorm NHWC, LayerNorm/RMSNorm), as gpu_check.py")
    parser.add_argument("--out", default="benchmarks/results/norms_gpu.json")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20; --quick 3)")
    parser.add_argument("--target-ms", type=float, default=20.0, help="minimum duration of a timed batch")
    parser.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth array (default 1024; --quick 64)")
    parser.add_argument("--only", default=None, help="regex: keep rows whose label matches")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reps = args.reps or (3 if args.quick else 20)
    copy_mib = args.copy_mib or (64 if args.quick else 1024)
    pool_mb = 8 if args.quick else ROTATE_POOL_MB
    target_s = args.target_ms / 1e3
    cases = quick_cases() if args.quick else anchor_cases() if args.anchors else full_cases()
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.label)]

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    copy = copy_bandwidth(copy_mib * 2**20, reps=max(reps, 3 if args.quick else 50), target_s=target_s)
    print(f"copy bandwidth: {copy['tb_s']:.3f} TB/s median, {copy['tb_s_best']:.3f} best "
          f"({copy_mib} MiB float32 x*a, read+write)", flush=True)

    reasons = Reasons()
    bar = Progress(len(cases))
    rows = []
    for case in cases:
        rows.append(run_case(case, reps=reps, target_s=target_s, pool_mb=pool_mb,
                             copy_tb_s=copy["tb_s"], reasons=reasons))
        bar.step(case.label)

    command = "python benchmarks/bench_gpu_norms.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(
        args.out, rows, command=command.strip(),
        gpu={"device_kind": device.device_kind, "platform": device.platform},
        extra_versions=versions(),
        settings={"reps": reps, "target_ms": args.target_ms, "quick": args.quick,
                  "l2_threshold_mb": L2_MB, "rotate_below_mb": ROTATE_BELOW_MB, "rotate_pool_mb": pool_mb,
                  "mb": "1e6 bytes", "error_tolerance": ERROR_TOLERANCE},
        copy_bandwidth=copy,
        unavailable=sorted(reasons.seen),
    )
    print(f"wrote {args.out}")
    print_tables(rows, copy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
