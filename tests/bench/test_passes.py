"""The pass count (jaxnorm.bench.passes): known counts by hand, flax.linen's modules, jaxnorm's functions.

Every count is of a traced jaxpr, so the shapes are ``jax.ShapeDtypeStruct``\\ s
and nothing runs: the whole file takes a few seconds.
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax import export, lax
from jax.extend.core import Primitive
from jax.sharding import AxisType, PartitionSpec

from jaxnorm.bench.passes import PassCount, count_jaxpr, count_passes, count_passes_vjp

N, C = 64, 256
X = jax.ShapeDtypeStruct((N, C), jnp.float32)
VEC = jax.ShapeDtypeStruct((C,), jnp.float32)
EPS = 1e-6


# --------------------------------------------------------------------------- hand-written functions


def fast_variance_ln(x, scale, bias):
    """flax's default: E[x] and E[x²] as siblings, var = E[x²] − E[x]²."""
    mean = jnp.mean(x, -1, keepdims=True)
    mean2 = jnp.mean(x * x, -1, keepdims=True)
    var = jnp.maximum(mean2 - mean * mean, 0.0)
    return (x - mean) * lax.rsqrt(var + EPS) * scale + bias


def two_pass_ln(x, scale, bias):
    """Textbook: the mean, then E[(x − mean)²], then the output."""
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + EPS) * scale + bias


def shifted_ln(x, scale, bias):
    """Moments of x − s, with the shift s the first entry of each row (a slice, not a pass)."""
    s = lax.stop_gradient(x[:, :1])
    d = x - s
    m = jnp.mean(d, -1, keepdims=True)
    var = jnp.mean(d * d, -1, keepdims=True) - m * m
    return (d - m) * lax.rsqrt(var + EPS) * scale + bias


def rms_norm(x, scale):
    return x * lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + EPS) * scale


def assert_count(count: PassCount, passes, reads=None, writes=None):
    assert count.passes == passes, count.describe()
    assert len(count.per_pass) == passes
    if reads is not None:
        assert count.reads == pytest.approx(reads), count.describe()
    if writes is not None:
        assert count.writes == pytest.approx(writes), count.describe()


def test_fast_variance_layer_norm_is_two_passes():
    count = count_passes(fast_variance_ln, X, VEC, VEC)
    assert_count(count, 2, reads=(1, 1), writes=(0, 1))
    assert count.per_pass[0].reductions == 2 and "sibling" in count.per_pass[0].description
    assert count.per_pass[0].read_names == ("x",) and count.per_pass[1].write_names == ("out",)
    assert count.flags == () and count.alternatives == (2,) and not count.data_dependent_control_flow
    assert count.unit_bytes == N * C * 4 and count.traffic == 3


def test_two_pass_variance_is_three_passes():
    assert_count(count_passes(two_pass_ln, X, VEC, VEC), 3, reads=(1, 1, 1), writes=(0, 0, 1))


def test_shift_taken_as_a_slice_is_not_a_pass():
    assert_count(count_passes(shifted_ln, X, VEC, VEC), 2, reads=(1, 1), writes=(0, 1))


def test_shift_taken_as_a_reduction_is_a_pass():
    def mean_shifted(x):
        s = jnp.mean(x, -1, keepdims=True)
        d = x - s
        return jnp.sum(d, -1) + jnp.sum(d * d, -1)

    assert_count(count_passes(mean_shifted, X), 2, writes=(0, 0))


def test_rms_norm_is_two_passes():
    assert_count(count_passes(rms_norm, X, VEC), 2, reads=(1, 1), writes=(0, 1))


def test_elementwise_is_one_pass_and_counts_each_array_read():
    assert_count(count_passes(lambda x: jnp.tanh(x) * 2 + 1, X), 1, reads=(1,), writes=(1,))
    assert_count(count_passes(lambda x, g: x * g + jnp.sin(x), X, X), 1, reads=(2,), writes=(1,))
    # Two full-size outputs of one pass.
    assert_count(count_passes(lambda x: (x + 1, x * 2), X), 1, reads=(1,), writes=(2,))


def test_reduction_feeding_a_reduction_is_three_passes():
    def chain(x):
        a = jnp.sum(x, -1, keepdims=True)
        b = jnp.sum(x * a, -1, keepdims=True)
        return x * b

    assert_count(count_passes(chain, X), 3, reads=(1, 1, 1), writes=(0, 0, 1))
    # Without a full-size output the chain is two passes.
    assert_count(count_passes(lambda x: jnp.sum(x * jnp.sum(x)), X), 2, writes=(0, 0))


def test_reductions_along_different_axes_are_siblings():
    count = count_passes(lambda x: x - jnp.mean(x, 0) - jnp.mean(x, 1, keepdims=True), X)
    assert_count(count, 2)
    assert count.per_pass[0].reductions == 2


def test_dead_work_is_not_counted():
    def f(x):
        jnp.sum(jnp.sum(x, -1, keepdims=True) * x)  # unused
        return x * 2

    assert_count(count_passes(f, X), 1)


def test_small_slices_and_small_work_are_free():
    assert_count(count_passes(lambda x: jnp.sum(x[:, 0]) * x[0], X), 0, reads=(), writes=())
    # Half of x is full-size: reducing it is a pass.
    assert_count(count_passes(lambda x: jnp.sum(x[:, : C // 2]), X), 1, reads=(1,))


def test_full_fraction_sets_what_is_full_size():
    f = lambda x: jnp.sum(x[:, : C // 8])  # noqa: E731
    assert count_passes(f, X).passes == 0
    assert count_passes(f, X, full_fraction=0.1).passes == 1


def test_input_returned_unchanged_is_not_written():
    assert_count(count_passes(lambda x, g: (x, g + 1), X, X), 1, reads=(1,), writes=(1,))


def test_units_are_the_largest_inputs_bytes():
    xb = jax.ShapeDtypeStruct((N, C), jnp.bfloat16)
    count = count_passes(lambda x: x.astype(jnp.float32) * 2, xb)
    assert count.unit_bytes == N * C * 2
    assert_count(count, 1, reads=(1,), writes=(2,))


# --------------------------------------------------------------------------- call-like primitives


def test_call_like_primitives_are_inlined():
    @jax.custom_jvp
    def cj(x, scale, bias):
        return fast_variance_ln(x, scale, bias)

    cj.defjvp(lambda p, t: (cj(*p), t[0]))

    @jax.custom_vjp
    def cv(x, scale, bias):
        return fast_variance_ln(x, scale, bias)

    cv.defvjp(lambda x, s, b: (cv(x, s, b), None), lambda r, g: (g, None, None))

    wrapped = {
        "jit": jax.jit(fast_variance_ln),
        "checkpoint": jax.checkpoint(fast_variance_ln),
        "custom_jvp": cj,
        "custom_vjp": cv,
        "nested": jax.jit(jax.checkpoint(jax.jit(cj))),
    }
    for name, f in wrapped.items():
        count = count_passes(f, X, VEC, VEC)
        assert count.passes == 2 and count.flags == (), (name, count.describe())


def test_checkpoint_names_and_stop_gradient_are_free():
    from jax.ad_checkpoint import checkpoint_name

    def f(x, scale, bias):
        mean = checkpoint_name(jnp.mean(x, -1, keepdims=True), "stats")
        return lax.stop_gradient(x - mean) * scale + bias

    assert_count(count_passes(jax.checkpoint(f, policy=jax.checkpoint_policies.save_only_these_names("stats")),
                              X, VEC, VEC), 2)


def test_vmapped_collective_is_a_reduction():
    f = jax.vmap(lambda x: x - lax.pmean(x, "batch"), axis_name="batch")
    assert_count(count_passes(f, X), 2, reads=(1, 1), writes=(0, 1))


def test_shard_map_body_is_counted_at_global_size():
    mesh = jax.make_mesh((8,), ("b",), axis_types=(AxisType.Auto,))
    body = lambda x: x - lax.pmean(jnp.mean(x, 0), "b")  # noqa: E731
    f = jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec("b"), out_specs=PartitionSpec("b"))
    assert_count(count_passes(f, X), 2, reads=(1, 1), writes=(0, 1))


# --------------------------------------------------------------------------- non-elementwise full-size ops


def test_matmul_is_a_pass_of_its_own_and_its_result_is_read_back():
    x = jax.ShapeDtypeStruct((4096, C), jnp.float32)
    w = jax.ShapeDtypeStruct((C, C), jnp.float32)  # small: 1/16 of x
    count = count_passes(lambda x, w: fast_variance_ln(x @ w, 1.0, 0.0), x, w)
    assert_count(count, 3, reads=(1, 1, 1), writes=(1, 0, 1))
    assert count.per_pass[0].kind == "dot_general" and count.per_pass[1].read_names == ("dot_general result",)
    # A contraction to a small result is a reduction, fused with its siblings.
    count = count_passes(lambda x, v: x * (x @ v)[:, None] + jnp.sum(x, -1, keepdims=True), X, VEC)
    assert_count(count, 2)
    assert count.per_pass[0].reductions == 2


def test_conv_and_reduce_window_are_passes_of_their_own():
    img = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",  # noqa: E731
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    count = count_passes(lambda x, k: jax.nn.relu(conv(x, k)), img, k)
    assert_count(count, 2, reads=(1, 1), writes=(1, 1))
    assert count.per_pass[0].kind == "conv_general_dilated"
    pool = lambda x: lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")  # noqa: E731
    assert_count(count_passes(lambda x: pool(x) / 9 - x, img), 2)
    assert_count(count_passes(lambda x: jnp.cumsum(x, -1), X), 1, reads=(1,), writes=(1,))


# --------------------------------------------------------------------------- control flow


def test_data_dependent_cond_counts_the_worst_branch_after_its_predicate():
    def f(x, scale, bias):
        bad = jnp.max(jnp.abs(jnp.mean(x, -1))) > 1e3
        return lax.cond(bad, two_pass_ln, fast_variance_ln, x, scale, bias)

    count = count_passes(f, X, VEC, VEC)
    assert count.data_dependent_control_flow and "data-dependent cond" in count.flags
    # The predicate needs pass 1; then the branch: fast 2 passes, textbook 3.
    assert sorted(count.alternatives) == [3, 4]
    assert_count(count, 4)


def test_cond_on_a_sample_does_not_wait_for_a_pass():
    def f(x):
        return lax.cond(x[0, 0] > 0, lambda x: x * 2, lambda x: x - jnp.mean(x), x)

    count = count_passes(f, X)
    assert count.data_dependent_control_flow and sorted(count.alternatives) == [1, 2]


def test_conds_sharing_an_index_take_the_same_branch():
    def f(x):
        p = x[0, 0] > 0
        a = lax.cond(p, lambda x: x * 2, lambda x: x - jnp.mean(x, -1, keepdims=True), x)
        return lax.cond(p, lambda x: x + 1, lambda x: x - jnp.mean(x, -1, keepdims=True), a)

    assert sorted(count_passes(f, X).alternatives) == [1, 3]


def test_vmapped_cond_is_a_select_running_both_branches():
    def f(row):
        return lax.cond(row[0] > 0, lambda r: r * 2, lambda r: r - jnp.mean(r), row)

    count = count_passes(jax.vmap(f), X)
    assert_count(count, 2)
    assert not count.data_dependent_control_flow


def test_loops_are_flagged():
    count = count_passes(lambda x: lax.fori_loop(0, 3, lambda i, c: c * 2, x), X)
    assert "scan" in count.flags and count.passes == 1
    count = count_passes(lambda x: lax.while_loop(lambda c: jnp.sum(c) > 0, lambda c: c - 1, x), X)
    assert "while" in count.flags and count.data_dependent_control_flow and count.passes == 1
    # A loop over small data only is free, but still flagged.
    count = count_passes(lambda x: x * lax.fori_loop(0, 3, lambda i, c: c * 2, jnp.sum(x)), X)
    assert "scan" in count.flags and count.passes == 2


def test_platform_dependent_takes_the_platforms_branch_unflagged():
    def f(x, scale, bias):
        return lax.platform_dependent(x, scale, bias, cpu=two_pass_ln, default=fast_variance_ln)

    for platform, passes in (("cuda", 2), ("tpu", 2), ("rocm", 2), ("cpu", 3)):
        count = count_passes(f, X, VEC, VEC, platform=platform)
        assert count.passes == passes and count.flags == (), (platform, count.describe())
    assert count_passes_vjp(f, X, VEC, VEC).flags == ()


# A stand-in for the jaxnorm_per_platform primitive: params cpu and accelerator, two ClosedJaxprs.
_per_platform = Primitive("jaxnorm_per_platform")
_per_platform.multiple_results = True
_per_platform.def_abstract_eval(lambda *avals, cpu, accelerator: accelerator.out_avals)


def test_jaxnorm_per_platform_counts_the_accelerator_jaxpr():
    cpu = jax.make_jaxpr(two_pass_ln)(X, VEC, VEC)
    accelerator = jax.make_jaxpr(fast_variance_ln)(X, VEC, VEC)

    def f(x, scale, bias):
        return _per_platform.bind(x, scale, bias, cpu=cpu, accelerator=accelerator)[0]

    assert count_passes(f, X, VEC, VEC).passes == 2
    assert count_passes(f, X, VEC, VEC, platform="tpu").passes == 2
    assert count_passes(f, X, VEC, VEC, platform="cpu").passes == 3
    # Nested under jit too.
    assert count_passes(jax.jit(f), X, VEC, VEC).passes == 2


def test_unknown_primitive_is_an_opaque_flagged_pass():
    mystery = Primitive("mystery_op")
    mystery.def_abstract_eval(lambda x: x)
    count = count_passes(lambda x: mystery.bind(x) + 1, X)
    assert "unknown primitive: mystery_op" in count.flags
    assert_count(count, 2, reads=(1, 1), writes=(1, 1))


def test_count_jaxpr_and_describe():
    count = count_jaxpr(jax.make_jaxpr(two_pass_ln)(X, VEC, VEC), in_names=["x", "scale", "bias"],
                        out_names=["y"])
    text = str(count)
    assert text.splitlines()[0].startswith("3 passes")
    assert "pass 3: read x (1×); write y (1×)" in text


# --------------------------------------------------------------------------- forward+backward


def test_vjp_of_hand_written_norms():
    """fast LN: pass 1 Σx, Σx², Σ_rows dy (dbias); pass 2 the sums that need mean and rstd
    (Σ dy·(x − μ)·scale, Σ dy·scale·rstd, dscale = Σ_rows dy·x̂); pass 3 dx. RMSNorm: pass 1 E[x²] and
    Σ dy·scale·x (no statistic needed); pass 2 dscale = Σ_rows dy·x·rstd and dx."""
    assert_count(count_passes_vjp(fast_variance_ln, X, VEC, VEC), 3, reads=(2, 2, 2), writes=(0, 0, 1))
    assert_count(count_passes_vjp(rms_norm, X, VEC), 2, reads=(2, 2), writes=(0, 1))
    # Only x differentiated: no Σ dy·x̂ for dscale, same passes.
    count = count_passes_vjp(fast_variance_ln, X, VEC, VEC, argnums=0)
    assert_count(count, 3, writes=(0, 0, 1))
    assert count.per_pass[-1].write_names == ("dx",)
    # With the primal output too (a training step): y is written in pass 2, beside the backward's sums.
    assert_count(count_passes_vjp(fast_variance_ln, X, VEC, VEC, with_primal=True), 3, writes=(0, 1, 1))


# --------------------------------------------------------------------------- flax.linen

nn = pytest.importorskip("flax.linen")
SHAPE = jax.ShapeDtypeStruct((16, 32, 32, 256), jnp.float32)


def _flax(module, mutable=False):
    variables = jax.eval_shape(module.init, jax.random.key(0), SHAPE)
    if mutable:
        return (lambda v, x: module.apply(v, x, mutable=["batch_stats"])[0]), variables
    return (lambda v, x: module.apply(v, x)), variables


FLAX = {
    "LayerNorm": (lambda: nn.LayerNorm(), False),
    "GroupNorm": (lambda: nn.GroupNorm(num_groups=32), False),
    "InstanceNorm": (lambda: nn.InstanceNorm(), False),
    "BatchNorm": (lambda: nn.BatchNorm(use_running_average=False), True),
}


@pytest.mark.parametrize("name", sorted(FLAX))
def test_flax_centred_norms(name):
    """flax.linen's LN/GN/IN/BN (use_fast_variance=True), by hand.

    Forward: pass 1 reads x for the sibling sums Σx and Σx² (over features for LN, over space and a
    group for GN, over space for IN, over all but channels for BN); pass 2 reads x and writes
    y = (x − μ)·rsqrt(var + ε)·scale + bias. 2 passes, traffic 3×.

    Forward+backward (dy an input, gradients of x, scale, bias): pass 1 reads x, dy for Σx, Σx² and
    dbias = Σ dy; pass 2 reads x, dy for the sums that need μ and rstd (Σ dy·scale·(x − μ) for var's
    gradient, Σ dy·mul for the mean's, dscale = Σ dy·x̂); pass 3 reads x, dy and writes dx. 3 passes,
    traffic 7×. (No algebraic rewriting: Σ dy·(x − μ) = Σ dy·x − μ·Σ dy would save pass 2's wait.)
    """
    make, mutable = FLAX[name]
    f, variables = _flax(make(), mutable)
    forward = count_passes(f, variables, SHAPE)
    assert_count(forward, 2, reads=(1, 1), writes=(0, 1))
    assert forward.per_pass[0].reductions == 2 and forward.flags == ()
    both = count_passes_vjp(f, variables, SHAPE)
    assert_count(both, 3, reads=(2, 2, 2), writes=(0, 0, 1))
    assert both.flags == ()
    assert both.per_pass[2].write_names == ("dx",)


def test_flax_rms_norm():
    """flax.linen's RMSNorm by hand. Forward: pass 1 Σx²; pass 2 y = x·rsqrt(E[x²] + ε)·scale: 2 passes.
    Forward+backward: pass 1 reads x, dy for Σx² and Σ dy·scale·x (the gradient of E[x²], which
    needs no statistic); pass 2 reads x, dy for dscale = Σ dy·x·rstd and writes dx. 2 passes, traffic 5×.
    """
    f, variables = _flax(nn.RMSNorm())
    assert_count(count_passes(f, variables, SHAPE), 2, reads=(1, 1), writes=(0, 1))
    both = count_passes_vjp(f, variables, SHAPE)
    assert_count(both, 2, reads=(2, 2), writes=(0, 1))
    assert [p.reductions for p in both.per_pass] == [2, 1]


# --------------------------------------------------------------------------- jaxnorm's functions


def _has_conditional(fn, *args) -> bool:
    """The oracle: a cuda export of ``fn`` holds an HLO conditional."""
    text = export.export(jax.jit(fn), platforms=["cuda"])(*args).mlir_module()
    return "stablehlo.case" in text or "stablehlo.if" in text


def test_jaxnorm_functions_run_and_report_their_conditionals():
    """jaxnorm's current functions: the tool runs, and flags data-dependent control flow exactly when
    the cuda export holds a conditional (today LN/GN/IN/BN hold a lax.cond; no count is asserted)."""
    import jaxnorm as jn

    x = jax.ShapeDtypeStruct((4, 8, 8, 64), jnp.float32)
    v = jax.ShapeDtypeStruct((64,), jnp.float32)
    stats = jn.BatchStats.init(64)
    fns = {
        "layer_norm": lambda x, s, b: jn.layer_norm(x, s, b),
        "rms_norm": lambda x, s, b: jn.rms_norm(x, s),
        "group_norm": lambda x, s, b: jn.group_norm(x, s, b, num_groups=8),
        "instance_norm": lambda x, s, b: jn.instance_norm(x, s, b),
        "batch_norm": lambda x, s, b: jn.batch_norm(x, s, b, stats, training=True)[0],
    }
    for name, f in fns.items():
        grad = lambda x, s, b, dy, f=f: jax.vjp(f, x, s, b)[1](dy)  # noqa: E731
        for kind, count, oracle in (
            ("forward", count_passes(f, x, v, v), functools.partial(_has_conditional, f, x, v, v)),
            ("forward+backward", count_passes_vjp(f, x, v, v),
             functools.partial(_has_conditional, grad, x, v, v, x)),
        ):
            assert count.passes >= 1 and len(count.per_pass) == count.passes, (name, kind)
            assert count.data_dependent_control_flow == oracle(), (name, kind, count.describe())
            if count.data_dependent_control_flow:
                assert len(count.alternatives) >= 2 and count.passes == max(count.alternatives)


def test_scatter_of_a_few_entries_fuses_and_of_full_size_updates_does_not():
    assert_count(count_passes(lambda x: x.at[:, 0].add(jnp.sum(x, -1)), X), 2)
    idx = jax.ShapeDtypeStruct((N,), jnp.int32)
    assert_count(count_passes(lambda x, i: jnp.zeros_like(x).at[i].add(x) * 2, X, idx), 2,
                 reads=(1, 1), writes=(1, 1))
