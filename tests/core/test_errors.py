"""Error contract (DESIGN.md, "Errors"): bad shapes and settings raise at trace time.

Every case is checked three ways: eagerly, under ``jax.jit`` (the bad setting
closed over, the array a jit argument) and under ``jax.vmap`` over an extra
leading axis. Each must raise a ``ValueError`` or ``TypeError`` whose message
starts with the function's name and states what it received and how to fix it.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

F32 = jnp.float32

LN = (2, 3, 8)  # layer_norm / rms_norm input: (N, T, D)
LN4 = (2, 3, 4, 8)  # rank-4 input for the axis checks
NHWC = (2, 4, 4, 8)  # group_norm / instance_norm input, channels last
NCHW = (2, 8, 4, 4)  # the same, channels first (channel_axis=1)

FUNCS = {
    "layer_norm": jn.layer_norm,
    "rms_norm": jn.rms_norm,
    "group_norm": lambda x, *a, **k: jn.group_norm(x, *a, **{"num_groups": 2, **k}),
    "instance_norm": jn.instance_norm,
}
ALL = ("layer_norm", "rms_norm", "group_norm", "instance_norm")
FEATURE = ("layer_norm", "rms_norm")  # normalize over `axis`
CHANNEL = ("group_norm", "instance_norm")  # batch axis 0, `channel_axis`
WITH_IMPL = ("layer_norm", "rms_norm", "group_norm", "instance_norm")  # take `implementation`
PARAMS = {  # parameters each function takes besides x
    "layer_norm": ("scale", "bias"),
    "rms_norm": ("scale",),
    "group_norm": ("scale", "bias"),
    "instance_norm": ("scale", "bias"),
}
DEFAULT_SHAPE = {"layer_norm": LN, "rms_norm": LN, "group_norm": NHWC, "instance_norm": NHWC}

MODES = ("eager", "jit", "vmap")


def f32(*shape):
    return jnp.ones(shape, F32)


def esc(value) -> str:
    """Regex for the literal text of ``value`` (a shape tuple, a repr...)."""
    return re.escape(str(value))


def run(mode: str, fn, x):
    """Call ``fn(x)`` eagerly, under jit, or under vmap over a new leading axis."""
    if mode == "eager":
        return fn(x)
    if mode == "jit":
        return jax.jit(fn)(x)
    assert mode == "vmap"
    return jax.vmap(fn)(jnp.broadcast_to(x, (2,) + x.shape))


def case(name, shape, kwargs, exc, match, *, dtype=F32, id=None):
    """One error case: ``FUNCS[name](ones(shape, dtype), **kwargs)`` raises ``exc``."""
    label = id or "-".join(f"{k}={v!r}" if not hasattr(v, "shape") else f"{k}{v.shape}"
                           for k, v in kwargs.items())
    return pytest.param(name, shape, dtype, kwargs, exc, match, id=f"{name}-{label}")


# ---------------------------------------------------------------------------
# Case tables.
# ---------------------------------------------------------------------------

GROUP_CASES = [
    case("group_norm", (2, 4, 4, 7), dict(num_groups=2), ValueError,
         r"^group_norm: 7 channels cannot be split into num_groups=2 groups "
         r"\(input shape \(2, 4, 4, 7\), channel_axis=-1\); choose num_groups dividing 7\b",
         id="7_channels-num_groups=2"),
    case("group_norm", (2, 6, 4, 4), dict(num_groups=4, channel_axis=1), ValueError,
         r"^group_norm: 6 channels cannot be split into num_groups=4 .*"
         r"channel_axis=1.*choose num_groups dividing 6\b",
         id="nchw-6_channels-num_groups=4"),
    case("group_norm", (2, 5, 4), dict(num_groups=10), ValueError,  # more groups than channels
         r"^group_norm: 4 channels cannot be split into num_groups=10 .*choose num_groups dividing 4\b",
         id="4_channels-num_groups=10"),
]
# num_groups <= 0 or not an int: the message names it, the value received, and a fix.
NUM_GROUPS_FIX = r";.*\b(pass|use|choose)\b.*num_groups"
for _ng, _exc, _got in [
    (0, ValueError, r"num_groups=0\b"),
    (-2, ValueError, r"num_groups=-2\b"),
    (2.0, TypeError, r"\b2\.0\b.*\bfloat\b"),
    (True, TypeError, r"\bTrue\b.*\bbool\b"),
    (np.float32(2.0), TypeError, r"\b2\.0\b.*\bfloat32\b"),
    ("2", TypeError, r"'2'.*\bstr\b"),
    (None, TypeError, r"\bNone\b"),  # group_norm has no default: None is not "one group per channel"
]:
    GROUP_CASES.append(case(
        "group_norm", NHWC, dict(num_groups=_ng), _exc,
        r"^group_norm: num_groups must be a positive int.*" + _got + ".*" + NUM_GROUPS_FIX,
        id=f"num_groups={_ng!r}"))


def _param_message(name, param, expected, got):
    return (rf"^{name}: {param} must have shape .*{esc(expected)}.* for an input of shape .*"
            rf"got shape {esc(got)}.*reshape {param}")


PARAM_CASES = []
# Wrong shapes, including ones that would silently broadcast against x.
for _name in CHANNEL:
    for _param in PARAMS[_name]:
        for _shape in [(1,), (8, 1), (), (1, 8), (3, 8), (8, 2), (2, 1, 1, 8), (16,)]:
            PARAM_CASES.append(case(_name, NHWC, {_param: f32(*_shape)}, ValueError,
                                    _param_message(_name, _param, (8,), _shape)))
        # PyTorch-style (C, 1, 1) for an NCHW input.
        PARAM_CASES.append(case(_name, NCHW, {_param: f32(8, 1, 1), "channel_axis": 1}, ValueError,
                                _param_message(_name, _param, (8,), (8, 1, 1))))
    # A Python float scale would broadcast too.
    PARAM_CASES.append(case(_name, NHWC, {"scale": 2.0}, ValueError,
                            _param_message(_name, "scale", (8,), ()), id="scale=2.0"))
for _name in FEATURE:
    for _param in PARAMS[_name]:
        for _shape in [(1,), (8, 1), (), (1, 8), (3, 8), (2, 3, 8), (1, 1, 8), (4,)]:
            PARAM_CASES.append(case(_name, LN, {_param: f32(*_shape)}, ValueError,
                                    _param_message(_name, _param, (8,), _shape)))
        # Two normalized axes want (3, 8) (or (2, 3, 8) per example), not (8,).
        PARAM_CASES.append(case(_name, LN4, {_param: f32(8), "axis": (-2, -1)}, ValueError,
                                _param_message(_name, _param, (4, 8), (8,))))
    PARAM_CASES.append(case(_name, LN, {"scale": 2.0}, ValueError,
                            _param_message(_name, "scale", (8,), ()), id="scale=2.0"))
# Non-floating parameters.
for _name in ALL:
    for _param in PARAMS[_name]:
        for _dtype in (jnp.int32, jnp.bool_):
            _p = jnp.ones((8,), _dtype)
            PARAM_CASES.append(case(
                _name, DEFAULT_SHAPE[_name], {_param: _p}, TypeError,
                rf"^{_name}: {_param} must be floating point, got dtype {jnp.dtype(_dtype).name}.*"
                rf"; cast it, e\.g\. {_param}\.astype",
                id=f"{_param}-{jnp.dtype(_dtype).name}"))

INPUT_DTYPE_CASES = [
    case(_name, DEFAULT_SHAPE[_name], {}, TypeError,
         rf"^{_name}: expected a floating-point input, got dtype {jnp.dtype(_dtype).name} "
         rf"\(shape {esc(DEFAULT_SHAPE[_name])}\); cast it.*astype",
         dtype=_dtype, id=f"x-{jnp.dtype(_dtype).name}")
    for _name in ALL
    for _dtype in (jnp.int32, jnp.int64, jnp.uint8, jnp.bool_)
]

AXIS_CASES = []
for _name in FEATURE:
    for _axis, _bad in [(4, 4), (-5, -5), ((1, 4), 4), ((-5, -1), -5)]:
        AXIS_CASES.append(case(
            _name, LN4, dict(axis=_axis), ValueError,
            rf"^{_name}: axis={_bad} is out of range for an input of rank 4 "
            rf"\(shape \(2, 3, 4, 8\)\); use a value in \[-4, 3\]"))
    for _axis in [(-1, 3), (2, 2), [1, -3], (0, 1, -4)]:
        AXIS_CASES.append(case(
            _name, LN4, dict(axis=_axis), ValueError,
            rf"^{_name}: axis={esc(tuple(_axis))} names the same axis more than once "
            rf".*rank 4.*; list each axis once"))
    for _axis in [(), []]:
        AXIS_CASES.append(case(
            _name, LN4, dict(axis=_axis), ValueError,
            rf"^{_name}: axis must name at least one axis, got {esc(_axis)}; pass e\.g\. axis=-1"))
    for _axis, _type in [(1.0, "float"), (True, "bool"), ((1.0, 2), "float")]:
        AXIS_CASES.append(case(
            _name, LN4, dict(axis=_axis), TypeError,
            rf"^{_name}: axis must be an int, got .*\b{_type}\b.*; pass e\.g\. axis=-1"))
for _name in CHANNEL:
    for _ca in (4, -5, 10):
        AXIS_CASES.append(case(
            _name, NHWC, dict(channel_axis=_ca), ValueError,
            rf"^{_name}: channel_axis={_ca} is out of range for an input of rank 4 "
            rf"\(shape \(2, 4, 4, 8\)\); use a value in \[-4, 3\]"))
    for _ca in (0, -4):
        AXIS_CASES.append(case(
            _name, NHWC, dict(channel_axis=_ca), ValueError,
            rf"^{_name}: channel_axis={_ca} is the batch axis .*\(2, 4, 4, 8\).*"
            rf"use channel_axis=-1 \(NHWC\) or channel_axis=1"))
    for _ca, _type in [(1.0, "float"), ((1,), "tuple"), (True, "bool")]:
        AXIS_CASES.append(case(
            _name, NHWC, dict(channel_axis=_ca), TypeError,
            rf"^{_name}: channel_axis must be an int, got .*\b{_type}\b.*; pass e\.g\. channel_axis=-1"))

RANK_CASES = [
    case("group_norm", (8,), {}, ValueError,
         r"^group_norm: expected an input of rank >= 2 .*got shape \(8,\) of rank 1; add the batch axis, e\.g\. x\[None\]",
         id="rank1"),
    case("group_norm", (), {}, ValueError,
         r"^group_norm: expected an input of rank >= 2 .*got shape \(\) of rank 0; add the batch axis, e\.g\. x\[None\]",
         id="rank0"),
    case("instance_norm", (2, 8), {}, ValueError,
         r"^instance_norm: expected an input of rank >= 3 .*got shape \(2, 8\) of rank 2; add a spatial axis, e\.g\. x\[:, None\]",
         id="rank2"),
    case("instance_norm", (8,), {}, ValueError,
         r"^instance_norm: expected an input of rank >= 3 .*got shape \(8,\) of rank 1; add a spatial axis, e\.g\. x\[:, None\]",
         id="rank1"),
    case("layer_norm", (), {}, ValueError,
         r"^layer_norm: expected an input of rank >= 1, got a scalar of shape \(\); .*x\[None\]",
         id="rank0"),
    case("rms_norm", (), {}, ValueError,
         r"^rms_norm: expected an input of rank >= 1, got a scalar of shape \(\); .*x\[None\]",
         id="rank0"),
]

WHERE_CASES = []
for _name in ALL:
    _xs = DEFAULT_SHAPE[_name]
    _bad_shapes = [  # shapes that do not broadcast to the input's (broadcasting ones are valid)
        (1,) + _xs,  # rank too big
        _xs[:-1] + (3,),  # wrong size on the last axis
        (3,) + _xs[1:],  # wrong size on the batch axis
        (3,),  # a rank-1 mask of the wrong size
    ]
    for _ws in _bad_shapes:
        WHERE_CASES.append(case(
            _name, _xs, dict(where=jnp.ones(_ws, jnp.bool_)), ValueError,
            rf"^{_name}: where must broadcast to the input's shape {esc(_xs)} .*"
            rf"got shape {esc(_ws)}; "))
    for _dtype in (jnp.float32, jnp.int32):
        WHERE_CASES.append(case(
            _name, _xs, dict(where=jnp.ones(_xs, _dtype)), TypeError,
            rf"^{_name}: where must be a boolean mask, got dtype {jnp.dtype(_dtype).name}; "
            rf"pass e\.g\. where=",
            id=f"where-{jnp.dtype(_dtype).name}"))

EPSILON_CASES = []
for _name in ALL:
    for _eps, _got in [(-1e-5, "-1e-05"), (-1, "-1"), (float("nan"), "nan"),
                       (float("inf"), "inf"), (np.float32(-0.5), r"(np\.float32\()?-0\.5\)?")]:
        EPSILON_CASES.append(case(
            _name, DEFAULT_SHAPE[_name], dict(epsilon=_eps), ValueError,
            rf"^{_name}: epsilon must be a finite number >= 0, got epsilon={_got}; .*1e-\d",
            id=f"epsilon={_eps!r}"))
    for _eps, _type in [("1e-5", "str"), (True, "bool")]:
        EPSILON_CASES.append(case(
            _name, DEFAULT_SHAPE[_name], dict(epsilon=_eps), TypeError,
            rf"^{_name}: epsilon must be a number, got .* of type {_type}; pass a Python float",
            id=f"epsilon={_eps!r}"))

IMPL_CASES = []
for _name in WITH_IMPL:
    IMPL_CASES.append(case(
        _name, DEFAULT_SHAPE[_name], dict(implementation="triton", where=np.ones(DEFAULT_SHAPE[_name], bool)),
        ValueError,
        rf"^{_name}: implementation='triton' (does not support a mask \(where=\)|needs ).*; "
        rf"use implementation=None or 'xla'"))
    for _impl in ("cuda", "XLA", "", 1):
        IMPL_CASES.append(case(
            _name, DEFAULT_SHAPE[_name], dict(implementation=_impl), ValueError,
            rf"^{_name}: implementation must be one of .*'triton'.*, got {esc(repr(_impl))}; "
            rf"use implementation=None"))

ALL_CASES = (GROUP_CASES + PARAM_CASES + INPUT_DTYPE_CASES + AXIS_CASES + RANK_CASES
             + WHERE_CASES + EPSILON_CASES + IMPL_CASES)


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, shape, dtype, kwargs, exc, match", ALL_CASES)
def test_raises_at_trace_time(mode, name, shape, dtype, kwargs, exc, match):
    fn = FUNCS[name]
    x = jnp.ones(shape, dtype)
    with pytest.raises(exc, match=match):
        run(mode, lambda x: fn(x, **kwargs), x)


@pytest.mark.parametrize("mode", ["jit", "vmap"])
@pytest.mark.parametrize("name", ALL)
def test_traced_epsilon(name, mode):
    """epsilon is a setting, not an input: a traced value is a TypeError, not a tracer error."""
    fn = FUNCS[name]
    x = jnp.ones(DEFAULT_SHAPE[name], F32)
    match = (rf"^{name}: epsilon must be a concrete number, got .*Trac.*; "
             rf"pass a Python float such as 1e-5")
    with pytest.raises(TypeError, match=match) as info:
        if mode == "jit":
            jax.jit(lambda x, eps: fn(x, epsilon=eps))(x, jnp.asarray(1e-5, F32))
        else:
            xb = jnp.broadcast_to(x, (2,) + x.shape)
            jax.vmap(lambda x, eps: fn(x, epsilon=eps))(xb, jnp.full((2,), 1e-5, F32))
    # The library's own TypeError, not JAX's ConcretizationTypeError leaking out.
    assert not isinstance(info.value, jax.errors.ConcretizationTypeError)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_valid_baseline_does_not_raise(name, mode):
    """Control: the settings the error cases perturb are valid as given."""
    x = jnp.ones(DEFAULT_SHAPE[name], F32)
    params = {p: f32(8) for p in PARAMS[name]}
    where = jnp.ones(DEFAULT_SHAPE[name], jnp.bool_)
    y = run(mode, lambda x: FUNCS[name](x, **params, where=where, epsilon=1e-5), x)
    assert y.dtype == F32
