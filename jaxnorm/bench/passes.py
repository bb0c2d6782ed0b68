"""Passes over full-size data that an ideally fusing compiler needs, counted from a jaxpr.

No GPU, no compiler and no timing: :func:`count_passes` traces a function
with :func:`jax.make_jaxpr`, inlines every call-like primitive (``jit``,
``closed_call``, ``custom_jvp_call``, ``custom_vjp_call``,
``checkpoint``/``remat``, ``shard_map``, ``composite``, ...), drops dead code,
and counts how many times an ideal compiler must stream the large arrays
through memory. :func:`count_passes_vjp` does the same for the
forward+backward, ``lambda *args, dy: jax.vjp(fn, *args)[1](dy)``, with the
cotangent ``dy`` an input, so the count does not depend on a loss.

The model
---------
*Full-size* arrays are those with at least ``full_fraction`` (default 1/4)
of the elements of the largest input; everything else (statistics, scale,
bias, a sample of a few entries per row) is *small* and free to read, keep
and recompute. Every value gets a *level*, the number of passes that must
finish before it can be computed:

- inputs and constants: level 0;
- elementwise work, and work that only relabels or indexes (broadcast,
  reshape, transpose, convert, select, pad, concatenate, slice, gather,
  dynamic_slice/update_slice, iota, stop_gradient, checkpoint names...):
  the max of its operands' levels. It is fused for free into whichever pass
  needs it; a full-size intermediate of this kind is never stored but
  recomputed from the stored arrays it depends on;
- a reduction (``reduce_*``, ``argmax``, variadic ``reduce``, ``psum`` over
  a positional axis, a ``dot_general`` with a small result) of a full-size
  operand at level L to a small result: *full-size work at level L*; its
  result has level L + 1. Reductions at the same level are siblings that
  share one pass (one kernel reading each array it needs once). A reduction
  whose result is full-size (a sum over a short axis) is fused like
  elementwise work; a reduction of small data is free;
- writing a full-size output of level L: full-size work at level L (an
  input returned unchanged is forwarded, not written);
- a full-size op that is neither (``conv_general_dilated``, ``dot_general``
  with a full-size result, ``reduce_window``, ``cumsum`` and friends,
  ``sort``, ``scatter`` of full-size updates, ``fft``, linear algebra,
  collectives of full-size data, ``while``/``scan`` bodies, unknown
  primitives): an *opaque* pass of its own, at the level of its operands;
  its full-size results are stored and read back by later passes at level
  L + 1.

The passes are the distinct levels holding fused full-size work, plus one
per opaque op, in level order. A pass *reads* the stored full-size arrays
(inputs, constants, opaque results) that its work depends on, each once,
and *writes* its full-size outputs; both are reported in units of the
largest input's bytes (a pass reading ``x`` and ``dy`` reads 2.0).

Control flow. A ``cond`` whose index comes from ``platform_index`` (what
``jax.lax.platform_dependent`` emits) takes the branch of ``platform``
(default ``"cuda"``), as does a ``jaxnorm_per_platform`` primitive (its
``accelerator`` jaxpr, or ``cpu`` for ``platform="cpu"``); neither is
flagged. Any other ``cond`` is data-dependent control flow: it is flagged,
every combination of branches is counted (``cond``\\ s sharing one index
take the same branch; at most ``max_branch_combinations``), the worst is
reported and ``alternatives`` lists the count of each combination. The
work in a branch cannot start before its index is known, so branch values
are at least at the index's level (a predicate computed from a reduction of
``x`` puts the whole branch after that pass). Under ``vmap`` a ``cond``
becomes a ``select``: both branches are counted, unflagged. ``while`` and
``scan`` are counted as one opaque pass (the body once, whatever the trip
count) and flagged; a loop over small data only is free (still flagged).

What it assumes, and cannot see: any number of arrays and reductions fit in
one kernel; any broadcast pattern fuses (a reduction over rows and one over
columns of the same array share a pass); transposes cost nothing; no
algebraic rewriting (``Σ g·(x − μ)`` is counted as needing ``μ`` first,
although it equals ``Σ g·x − μ·Σ g``); caches never hold a full-size array
between passes; small work and kernel launches are free. Real compilers
do worse (XLA:CPU, for instance, runs a reduction and its consumer as two
sweeps); the count is a floor to compare programs by, not a timing.
``count_passes_vjp`` counts one program taking ``dy`` as an input, so the
forward statistics and the backward's first reductions can share a pass;
a training step that runs the forward earlier and saves residuals runs the
forward's statistics pass on its own.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections import Counter
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

__all__ = ["Pass", "PassCount", "count_jaxpr", "count_passes", "count_passes_vjp"]

# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass over full-size data.

    Attributes:
      kind: ``"fused"`` (elementwise work and sibling reductions) or the name
        of the primitive of an opaque pass (``"dot_general"``, ``"while"``...).
      level: the level of the work (0 for the first fused pass).
      reads: bytes of full-size stored arrays read, in units of the largest input.
      writes: bytes of full-size arrays written, in the same units.
      read_names, write_names: the arrays read and written.
      reductions: number of full-size reductions in the pass (fused as siblings).
      description: one line, e.g. ``"pass 1: read x (1×); 2 sibling reductions (reduce_sum ×2)"``.
    """

    kind: str
    level: int
    reads: float
    writes: float
    read_names: tuple[str, ...]
    write_names: tuple[str, ...]
    reductions: int
    description: str


@dataclasses.dataclass(frozen=True)
class PassCount:
    """The passes of one program (the worst combination of ``cond`` branches).

    Attributes:
      passes: number of passes over full-size data.
      reads, writes: per pass, in units of the largest input's bytes.
      per_pass: the :class:`Pass` records, in order.
      flags: what the count could not model exactly (``"data-dependent cond"``,
        ``"while"``, ``"scan"``, ``"unknown primitive: ..."``, ...); empty when exact.
      alternatives: the pass count of each combination of data-dependent
        ``cond`` branches that was counted (one entry when there is none).
      unit_bytes: bytes of the largest input, the unit of ``reads``/``writes``.
    """

    passes: int
    reads: tuple[float, ...]
    writes: tuple[float, ...]
    per_pass: tuple[Pass, ...]
    flags: tuple[str, ...]
    alternatives: tuple[int, ...]
    unit_bytes: int

    @property
    def data_dependent_control_flow(self) -> bool:
        """Whether the program holds a ``cond`` on a value computed at run time (or a ``while``)."""
        return any(f in ("data-dependent cond", "while") for f in self.flags)

    @property
    def total_reads(self) -> float:
        return float(sum(self.reads))

    @property
    def total_writes(self) -> float:
        return float(sum(self.writes))

    @property
    def traffic(self) -> float:
        """Reads plus writes over all passes, in units of the largest input."""
        return self.total_reads + self.total_writes

    def describe(self) -> str:
        """A few lines: the total, each pass, and the flags."""
        head = f"{self.passes} pass{'es' if self.passes != 1 else ''}, traffic {self.traffic:g}× the input"
        if len(self.alternatives) > 1:
            head += f" (worst of {len(self.alternatives)} branch combinations: {list(self.alternatives)})"
        lines = [head] + [p.description for p in self.per_pass]
        if self.flags:
            lines.append("flags: " + ", ".join(self.flags))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------- primitives

_INLINE_CLOSED = {  # primitive -> param holding the (Closed)Jaxpr called with the eqn's operands
    "jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
    "custom_jvp_call_jaxpr": "fun_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr", "composite": "jaxpr",
    "custom_lin": None, "shard_map": "jaxpr", "xla_pmap": "call_jaxpr", "xla_call": "call_jaxpr",
}
_PASSTHROUGH = {  # value unchanged (per operand)
    "stop_gradient", "name", "copy", "copy_p", "optimization_barrier", "pvary", "sharding_constraint",
    "layout_constraint", "reshard", "mesh_cast", "device_put", "tie", "dce_sink", "preduced",
    "vary_unreduced_cast_p",
}
_REDUCTIONS = {
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor",
    "argmax", "argmin", "reduce",
}
_COLLECTIVE_REDUCTIONS = {"psum", "pmax", "pmin", "psum_invariant", "unreduced_psum"}
_SMALL_FREE_COLLECTIVES = {
    "all_gather", "all_gather_invariant", "all_to_all", "ppermute", "pbroadcast", "reduce_scatter",
    "axis_index", "all_gather_reduced", "ragged_all_to_all",
} | _COLLECTIVE_REDUCTIONS
_ELEMENTWISE = {
    # arithmetic and math
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh",
    "bitcast_convert_type", "cbrt", "ceil", "clamp", "clz", "complex", "conj", "convert_element_type",
    "cos", "cosh", "div", "eq", "exp", "exp2", "expm1", "floor", "ge", "gt", "imag", "integer_pow",
    "is_finite", "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "mulhi", "ne", "neg",
    "nextafter", "not", "or", "population_count", "pow", "real", "reduce_precision", "rem", "round",
    "rsqrt", "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin",
    "sinh", "sqrt", "square", "sub", "tan", "tanh", "xor", "eq_to", "le_to", "lt_to",
    "bessel_i0e", "bessel_i1e", "digamma", "erf", "erf_inv", "erfc", "igamma", "igamma_grad_a",
    "igammac", "lgamma", "polygamma", "regularized_incomplete_beta", "zeta",
    # relabelling, indexing, creation
    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "rev", "pad", "concatenate",
    "slice", "dynamic_slice", "dynamic_update_slice", "gather", "iota", "split", "tile", "stack",
    "unstack", "zeros_like", "empty", "empty2",
    # random bits are elementwise functions of the key and of the position
    "random_bits", "random_fold_in", "random_seed", "random_split", "random_unwrap", "random_wrap",
    "threefry2x32", "iota_2x32_shape", "rng_bit_generator", "rng_uniform",
    "platform_index", "create_token", "after_all",
}
_SCATTERS = {"scatter", "scatter-add", "scatter_add", "scatter-mul", "scatter_mul", "scatter-min",
             "scatter_min", "scatter-max", "scatter_max", "scatter-sub", "scatter_sub"}
_KNOWN_OPAQUE = {
    "conv_general_dilated", "dot_general", "ragged_dot_general", "reduce_window", "reduce_window_sum",
    "reduce_window_max", "reduce_window_min", "select_and_scatter", "select_and_scatter_add",
    "select_and_gather_add", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "sort", "top_k",
    "approx_top_k", "fft", "while", "scan", "cholesky", "eig", "eigh", "lu", "qr", "svd", "schur",
    "triangular_solve", "tridiagonal_solve", "householder_product", "geqrf", "lu_pivots_to_permutation",
    "pure_callback", "io_callback", "custom_call", "triton_kernel_call",
} | _SMALL_FREE_COLLECTIVES
_FLAGGED = {"while": "while", "scan": "scan", "pure_callback": "host callback", "io_callback": "host callback"}
_PER_PLATFORM = "jaxnorm_per_platform"
_GPU_NAMES = ("cuda", "rocm", "gpu")


# --------------------------------------------------------------------------- flat program


@dataclasses.dataclass
class _Value:
    shape: tuple[int, ...]
    dtype: Any
    size: int  # elements, scaled to the global array inside shard_map
    nbytes: int
    origin: str  # "input", "const", "literal", "op"
    name: str = ""


@dataclasses.dataclass
class _Node:
    prim: str
    kind: str  # "elementwise", "reduction", "opaque", or "dot_general"/"scatter" (decided by sizes)
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    ctrl: tuple[int, ...]  # indices of enclosing data-dependent conds
    flag: str | None = None  # what counting it flags, if it is live


class _Flattener:
    """One flat program from a jaxpr, for one assignment of data-dependent ``cond`` branches."""

    def __init__(self, assignment: dict, platform: str):
        self.assignment = assignment
        self.platform = platform
        self.values: list[_Value] = []
        self.nodes: list[_Node] = []
        self.pending: list[tuple[int, int]] = []  # (cond key, number of branches) left unassigned
        self.key: dict[int, int] = {}  # value -> canonical id for cond indices (through converts)
        self.platform_values: set[int] = set()
        self.platform_params: dict[int, Any] = {}  # platform_index value -> its ``platforms``
        self.cse: dict = {}  # (primitive, operands, ctrl, params) -> results, for duplicated work
        self.literals: dict = {}

    def new_value(self, aval, origin: str, scale: int, name: str = "") -> int:
        shape = tuple(int(d) for d in getattr(aval, "shape", ()))
        dtype = getattr(aval, "dtype", None)
        size = math.prod(shape) * scale
        self.values.append(_Value(shape, dtype, size, size * _itemsize(dtype), origin, name))
        return len(self.values) - 1

    # -- walking

    def inline(self, jaxpr, ins: Sequence[int], ctrl: tuple[int, ...], scale: int) -> list[int]:
        if isinstance(jaxpr, jcore.ClosedJaxpr):
            consts = [self.const_value(c, scale) for c in jaxpr.consts]
            jaxpr = jaxpr.jaxpr
        else:
            consts = []
        env: dict = {}
        for var, vid in zip(jaxpr.constvars, consts):
            env[var] = vid
        if len(jaxpr.invars) != len(ins):
            raise ValueError(f"count_passes: a jaxpr with {len(jaxpr.invars)} inputs called with {len(ins)}")
        for var, vid in zip(jaxpr.invars, ins):
            env[var] = vid
        for eqn in jaxpr.eqns:
            operands = [self.read(env, v, scale) for v in eqn.invars]
            outs = self.eqn(eqn, operands, ctrl, scale)
            for var, vid in zip(eqn.outvars, outs):
                env[var] = vid
        return [self.read(env, v, scale) for v in jaxpr.outvars]

    def const_value(self, c, scale: int) -> int:
        aval = jax.ShapeDtypeStruct(np.shape(c), c.dtype if hasattr(c, "dtype") else np.result_type(c))
        return self.new_value(aval, "const", scale, "const")

    def read(self, env, v, scale: int) -> int:
        if isinstance(v, jcore.Literal):
            key = (repr(v.val), str(v.aval))
            if key not in self.literals:
                self.literals[key] = self.new_value(v.aval, "literal", 1, "literal")
            return self.literals[key]
        return env[v]

    def add_node(self, prim, kind, ins, out_avals, ctrl, scale, cse_params=None, flag=None) -> list[int]:
        cse_key = None
        if cse_params is not None:
            cse_key = (prim, tuple(ins), ctrl, cse_params)
            if cse_key in self.cse:
                return list(self.cse[cse_key])
        outs = tuple(self.new_value(a, "op", scale) for a in out_avals)
        self.nodes.append(_Node(prim, kind, tuple(ins), outs, ctrl, flag))
        if cse_key is not None:
            self.cse[cse_key] = outs
        return list(outs)

    def eqn(self, eqn, ins: list[int], ctrl: tuple[int, ...], scale: int) -> list[int]:
        prim = eqn.primitive.name
        params = eqn.params
        out_avals = [v.aval for v in eqn.outvars]

        if prim in _PASSTHROUGH and len(ins) == len(out_avals):
            return list(ins)
        if prim == "cond":
            return self.cond(eqn, ins, ctrl, scale)
        if prim == _PER_PLATFORM:
            branch = params["cpu"] if self.platform == "cpu" else params["accelerator"]
            return self.inline(branch, ins, ctrl, scale)
        if prim in _INLINE_CLOSED and prim not in ("custom_lin",):
            inner_scale = scale
            if prim == "shard_map":
                inner_scale = scale * int(params["mesh"].size)
            elif prim == "xla_pmap":
                inner_scale = scale * int(params.get("axis_size", 1))
            return self.inline(params[_INLINE_CLOSED[prim]], ins, ctrl, inner_scale)

        if prim == "platform_index":
            outs = self.add_node(prim, "elementwise", ins, out_avals, ctrl, scale)
            self.platform_values.add(outs[0])
            self.platform_params[outs[0]] = params["platforms"]
            return outs

        if prim in _ELEMENTWISE:
            outs = self.add_node(prim, "elementwise", ins, out_avals, ctrl, scale, _hashable(params))
            if prim in ("convert_element_type", "clamp") and len(outs) == 1:
                src = ins[1] if prim == "clamp" else ins[0]
                self.key[outs[0]] = self.key.get(src, src)
                if src in self.platform_values:
                    self.platform_values.add(outs[0])
                    self.platform_params[outs[0]] = self.platform_params[src]
            return outs
        if prim in _REDUCTIONS:
            return self.add_node(prim, "reduction", ins, out_avals, ctrl, scale, _hashable(params))
        if prim in _COLLECTIVE_REDUCTIONS and any(isinstance(a, int) for a in params.get("axes", ())):
            # vmap's spelling of a reduction over a positional (batch) axis
            named = [a for a in params.get("axes", ()) if not isinstance(a, int)]
            return self.add_node(prim, "reduction" if not named else "opaque", ins, out_avals, ctrl, scale)
        if prim in _SCATTERS:
            return self.add_node(prim, "scatter", ins, out_avals, ctrl, scale)
        if prim == "dot_general":
            return self.add_node(prim, "dot_general", ins, out_avals, ctrl, scale)
        if prim in _KNOWN_OPAQUE:
            return self.add_node(prim, "opaque", ins, out_avals, ctrl, scale, flag=_FLAGGED.get(prim))

        # Unknown: a call-like primitive whose jaxpr takes the operands as they are is inlined.
        for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            jaxpr = params.get(name)
            if isinstance(jaxpr, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                inner = _jaxpr_of(jaxpr)
                if ([tuple(v.aval.shape) for v in inner.invars] == [self.values[i].shape for i in ins]
                        and [tuple(v.aval.shape) for v in inner.outvars] == [tuple(a.shape) for a in out_avals]):
                    return self.inline(jaxpr, ins, ctrl, scale)
        return self.add_node(prim, "opaque", ins, out_avals, ctrl, scale, flag=f"unknown primitive: {prim}")

    def cond(self, eqn, ins, ctrl, scale):
        branches = eqn.params["branches"]
        index, operands = ins[0], ins[1:]
        platforms = eqn.params.get("branches_platforms")
        if platforms is None and index in self.platform_values:
            platforms = self.platform_params[index]
        if platforms is not None:
            return self.inline(branches[_platform_branch(platforms, self.platform, len(branches))],
                               operands, ctrl, scale)
        key = self.key.get(index, index)
        choice = self.assignment.get(key)
        if choice is None:
            if not any(k == key for k, _ in self.pending):
                self.pending.append((key, len(branches)))
            choice = 0
        # Nothing in the branch starts before its index is known, nor is its result known before.
        inner = ctrl + (index,)
        outs = self.inline(branches[choice], operands, inner, scale)
        return [self.add_node("cond", "elementwise", (o,), [v.aval], inner, scale, flag="data-dependent cond")[0]
                for o, v in zip(outs, eqn.outvars)]


def _itemsize(dtype) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:  # extended dtypes (PRNG keys)
        return 4


def _jaxpr_of(j):
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _hashable(params) -> Any:
    try:
        items = tuple(sorted((k, repr(v)) for k, v in params.items()))
        hash(items)
        return items
    except Exception:  # noqa: BLE001 - no CSE for odd params
        return None


def _platform_branch(platforms, platform: str, n: int) -> int:
    """The branch ``platform_dependent`` takes for ``platform`` (None entries are the default)."""
    default = None
    for i, names in enumerate(platforms):
        if names is None:
            default = i
            continue
        names = (names,) if isinstance(names, str) else tuple(names)
        if (platform in names or (platform in _GPU_NAMES and "gpu" in names)
                or (platform == "gpu" and any(n in _GPU_NAMES for n in names))):
            return i
    if default is None:
        raise ValueError(f"count_passes: no branch of a platform_dependent for platform {platform!r} "
                         f"(branches for {platforms})")
    return min(default, n - 1)


# --------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class _Work:
    level: int
    kind: str  # "reduction", "write", "opaque"
    prim: str
    sources: frozenset
    writes: tuple[int, ...] = ()


def _analyze(fl: _Flattener, inputs: list[int], outputs: list[int], out_names: list[str],
             threshold: int, unit_bytes: int) -> tuple[tuple[Pass, ...], int, list[str]]:
    values = fl.values
    producer = {o: n for n in fl.nodes for o in n.outs}

    # Dead code: only work that an output depends on counts.
    live_nodes: set[int] = set()
    index_of = {id(n): i for i, n in enumerate(fl.nodes)}
    stack = list(outputs)
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        node = producer.get(v)
        if node is not None and index_of[id(node)] not in live_nodes:
            live_nodes.add(index_of[id(node)])
            stack.extend(node.ins)
            stack.extend(node.ctrl)

    level = [0] * len(values)
    full = [v.size >= threshold for v in values]
    sources: list[frozenset] = [frozenset()] * len(values)
    for vid, v in enumerate(values):
        if v.origin in ("input", "const") and full[vid]:
            sources[vid] = frozenset([vid])
        if v.origin == "literal":
            full[vid] = False
    work: list[_Work] = []
    stored_by_opaque: set[int] = set()
    flags: list[str] = []

    for i, node in enumerate(fl.nodes):
        if i not in live_nodes:
            continue
        if node.flag and node.flag not in flags:
            flags.append(node.flag)
        lv = max((level[j] for j in node.ins + node.ctrl), default=0)
        big_ins = [j for j in node.ins if full[j]]
        read = frozenset().union(*(sources[j] for j in big_ins)) if big_ins else frozenset()
        big_out = any(full[o] for o in node.outs)
        kind = node.kind
        if kind == "scatter":  # a few entries written into an array fuse; full-size updates do not
            kind = "opaque" if len(node.ins) > 2 and full[node.ins[2]] else "elementwise"
        if kind == "dot_general":  # an outer product of small data fuses; a contraction to small data reduces
            kind = "elementwise" if not big_ins else "opaque" if big_out else "reduction"
        if kind == "reduction" and (not big_ins or big_out):
            kind = "elementwise"  # of small data, or to a full-size result (a sum over a short axis)
        if kind == "opaque" and not big_ins and not big_out:
            kind = "elementwise"  # on small data only: free
        if kind == "elementwise":
            for o in node.outs:
                level[o] = lv
                sources[o] = read if full[o] else frozenset()
        elif kind == "reduction":
            work.append(_Work(lv, "reduction", node.prim, read))
            for o in node.outs:
                level[o] = lv + 1
        else:
            writes = tuple(o for o in node.outs if full[o])
            work.append(_Work(lv, "opaque", node.prim, read, writes))
            for o in node.outs:
                level[o] = lv + 1
                sources[o] = frozenset([o]) if full[o] else frozenset()
            stored_by_opaque.update(writes)

    written: set[int] = set()
    input_set = set(inputs)
    for o in outputs:
        if not full[o] or o in written or o in input_set or o in stored_by_opaque or values[o].origin != "op":
            continue
        written.add(o)
        work.append(_Work(level[o], "write", "write", sources[o], (o,)))

    names = {vid: values[vid].name for vid in range(len(values)) if values[vid].name}
    for o, name in zip(outputs, out_names):
        names.setdefault(o, name)
    for w in work:
        if w.kind == "opaque":
            for o in w.writes:
                names.setdefault(o, f"{w.prim} result")

    def label(ids) -> tuple[str, ...]:
        return tuple(sorted(names.get(i, f"array {i}") for i in ids))

    def nbytes(ids) -> float:
        return sum(values[i].nbytes for i in ids) / unit_bytes

    passes: list[Pass] = []
    for lv in sorted({w.level for w in work}):
        fused = [w for w in work if w.level == lv and w.kind in ("reduction", "write")]
        if fused:
            reads = frozenset().union(*(w.sources for w in fused))
            writes = tuple(o for w in fused if w.kind == "write" for o in w.writes)
            reductions = Counter(w.prim for w in fused if w.kind == "reduction")
            passes.append(_make_pass("fused", lv, reads, writes, reductions, label, nbytes, len(passes) + 1))
        for w in work:
            if w.level == lv and w.kind == "opaque":
                passes.append(_make_pass(w.prim, lv, w.sources, w.writes, Counter(), label, nbytes,
                                         len(passes) + 1))
    return tuple(passes), len(passes), flags


def _make_pass(kind, level, reads, writes, reductions: Counter, label, nbytes, number) -> Pass:
    n_red = sum(reductions.values())
    parts = []
    if kind != "fused":
        parts.append(f"{kind} (not fused)")
    read_names, write_names = label(reads), label(writes)
    r, w = nbytes(reads), nbytes(writes)
    parts.append(f"read {', '.join(read_names)} ({r:g}×)" if reads else "read nothing full-size")
    if n_red:
        kinds = ", ".join(f"{p} ×{c}" if c > 1 else p for p, c in sorted(reductions.items()))
        what = "sibling reductions" if n_red > 1 else "reduction"
        parts.append(f"{n_red} {what} ({kinds})")
    if writes:
        parts.append(f"write {', '.join(write_names)} ({w:g}×)")
    return Pass(kind, level, r, w, read_names, write_names, n_red, f"pass {number}: " + "; ".join(parts))


# --------------------------------------------------------------------------- entry points


def count_jaxpr(closed_jaxpr, *, in_names: Sequence[str] | None = None,
                out_names: Sequence[str] | None = None, platform: str = "cuda",
                full_fraction: float = 0.25, max_branch_combinations: int = 64) -> PassCount:
    """Count the passes of a ``ClosedJaxpr`` (see the module docstring for the model).

    Args:
      closed_jaxpr: as :func:`jax.make_jaxpr` returns it.
      in_names, out_names: names of the flat inputs and outputs, for the descriptions.
      platform: the platform whose branch ``platform_dependent`` and
        ``jaxnorm_per_platform`` take (``"cuda"``, ``"rocm"``, ``"tpu"``, ``"cpu"``).
      full_fraction: an array is full-size when it has at least this fraction of
        the largest input's elements.
      max_branch_combinations: how many combinations of data-dependent ``cond``
        branches to count at most (the flag ``"branches truncated"`` says when more exist).
    """
    jaxpr = closed_jaxpr.jaxpr
    n_in, n_out = len(jaxpr.invars), len(jaxpr.outvars)
    in_names = list(in_names) if in_names is not None else [f"in{i}" for i in range(n_in)]
    out_names = list(out_names) if out_names is not None else [f"out{i}" for i in range(n_out)]
    sizes = [math.prod(v.aval.shape) for v in jaxpr.invars] or [1]
    largest = int(np.argmax(sizes))
    threshold = max(1, math.ceil(full_fraction * sizes[largest]))
    unit_bytes = max(1, sizes[largest] * _itemsize(jaxpr.invars[largest].aval.dtype)) if n_in else 1

    results: list[tuple[tuple[Pass, ...], int, list[str]]] = []
    queue: list[dict] = [{}]
    runs, truncated = 0, False
    while queue:
        assignment = queue.pop(0)
        fl = _Flattener(assignment, platform)
        inputs = [fl.new_value(v.aval, "input", 1, name) for v, name in zip(jaxpr.invars, in_names)]
        outputs = fl.inline(closed_jaxpr, inputs, (), 1)
        if fl.pending:
            key, n = fl.pending[0]
            queue.extend({**assignment, key: b} for b in range(n))
            continue
        results.append(_analyze(fl, inputs, outputs, out_names, threshold, unit_bytes))
        runs += 1
        if runs >= max_branch_combinations and queue:
            truncated = True
            break

    def badness(r):
        passes = r[0]
        return (r[1], sum(p.reads + p.writes for p in passes))

    worst = max(results, key=badness)
    flags = list(dict.fromkeys(f for r in results for f in r[2]))
    if truncated:
        flags.append("branches truncated")
    passes = worst[0]
    return PassCount(
        passes=worst[1],
        reads=tuple(p.reads for p in passes),
        writes=tuple(p.writes for p in passes),
        per_pass=passes,
        flags=tuple(flags),
        alternatives=tuple(r[1] for r in results),
        unit_bytes=int(unit_bytes),
    )


def _arg_names(fn: Callable, args: Sequence) -> list[str]:
    """A name per positional argument: the parameter's name where the signature says it."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(len(args)):
        p = params[i] if i < len(params) else None
        if p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        else:
            names.append(f"args[{i}]")
    return names


def _leaf_names(tree, prefix: str) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [prefix + jax.tree_util.keystr(path) for path, _ in leaves]


def count_passes(fn: Callable, *args, platform: str = "cuda", full_fraction: float = 0.25,
                 max_branch_combinations: int = 64) -> PassCount:
    """The passes over full-size data of ``fn(*args)`` for an ideally fusing compiler.

    ``args`` may be arrays, ``jax.ShapeDtypeStruct``\\ s or pytrees of them (Flax
    variables). Keyword settings of ``fn`` go in a ``functools.partial`` or a
    lambda. See the module docstring for the model; the other arguments are
    those of :func:`count_jaxpr`.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    in_names = [n for arg, name in zip(args, _arg_names(fn, args)) for n in _leaf_names(arg, name)]
    out_names = _leaf_names(out_shape, "out")
    return count_jaxpr(closed, in_names=in_names, out_names=out_names, platform=platform,
                       full_fraction=full_fraction, max_branch_combinations=max_branch_combinations)


def count_passes_vjp(fn: Callable, *args, argnums: int | Sequence[int] | None = None,
                     with_primal: bool = False, platform: str = "cuda", full_fraction: float = 0.25,
                     max_branch_combinations: int = 64) -> PassCount:
    """The passes of the forward+backward: ``(*args, dy) -> vjp(fn, *args)[1](dy)``.

    ``dy`` is an input with the shape of ``fn``'s output (a full-size
    cotangent for a full-size output), so the count holds for any loss.
    Gradients are taken with respect to ``argnums`` (default: every argument);
    the others are inputs of the counted program too. With
    ``with_primal=True`` the program also returns ``fn``'s outputs (as a
    training step that hands ``y`` to the next layer does).
    """
    if argnums is None:
        argnums = tuple(range(len(args)))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    out_shape = jax.eval_shape(fn, *args)
    dy = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), out_shape)

    def program(*all_args):
        primals, cotangent = all_args[:-1], all_args[-1]

        def of_diff(*diff):
            full = list(primals)
            for i, d in zip(argnums, diff):
                full[i] = d
            return fn(*full)

        out, pullback = jax.vjp(of_diff, *(primals[i] for i in argnums))
        grads = pullback(cotangent)
        return (out, grads) if with_primal else grads

    closed = jax.make_jaxpr(program)(*args, dy)
    names = _arg_names(fn, args)
    in_names = [n for arg, name in zip(args, names) for n in _leaf_names(arg, name)]
    in_names += _leaf_names(dy, "dy")
    out_names = [n for i in argnums for n in _leaf_names(args[i], "d" + names[i])]
    if with_primal:
        out_names = _leaf_names(out_shape, "out") + out_names
    return count_jaxpr(closed, in_names=in_names, out_names=out_names, platform=platform,
                       full_fraction=full_fraction, max_branch_combinations=max_branch_combinations)
