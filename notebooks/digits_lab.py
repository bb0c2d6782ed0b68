"""A small laboratory for the normalization notebooks: digits, one CNN, a jitted training loop.

Shared by ``02_batch_size.ipynb`` and ``03_train_eval_gap.ipynb`` (they run
with ``notebooks/`` as working directory). Uses the public jaxnorm API only.

* :func:`load_data` — scikit-learn's 8×8 digits (no download), split 80/20.
* :class:`DigitsCNN` — three conv–norm–relu blocks, global mean, dense; the
  norm layer is chosen by name (:data:`NORMS`), nothing else changes.
* :func:`batch_plan` — the indices of every training batch of a run,
  shuffled (i.i.d.) or sorted by class (non-i.i.d.).
* :func:`train` — SGD with momentum, one jit-compiled step, one network per seed.
* :func:`accuracy_running` / :func:`accuracy_batch_stats` — evaluation in
  inference mode (running averages) or in training mode (batch statistics).
* :func:`with_population_stats` — running averages replaced by the exact
  training-set statistics at the final weights ("precise BN").
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from sklearn.datasets import load_digits

import jaxnorm as jn
from jaxnorm import linen as jnl

NORMS = {
    "batch": "BatchNorm",
    "group": "GroupNorm",
    "renorm": "Batch Renorm",
    "representative": "Representative BN",
}
"""The norm layers a :class:`DigitsCNN` can use: short name -> label for plots and tables."""

EXAMPLES_PER_EPOCH = 1408
"""Training examples seen per epoch: 44 × 32, a multiple of every batch size
from 2 to 32, so every batch size sees exactly the same number of examples.
Each epoch draws a fresh random 1408 of the 1437 training images."""

BASE_BATCH = 32
"""The batch size at which the peak learning rate equals ``base_lr`` (linear scaling)."""

RENORM_FINAL = (3.0, 5.0)
"""Batch Renorm's final ``(r_max, d_max)``, the paper's values."""


def small_settings() -> bool:
    """True when ``JAXNORM_NOTEBOOK_SMALL=1``: the notebooks shrink their experiment (CI)."""
    return os.environ.get("JAXNORM_NOTEBOOK_SMALL") == "1"


class Data(NamedTuple):
    x_train: np.ndarray  # (1437, 8, 8, 1) float32 in [0, 1]
    y_train: np.ndarray  # (1437,) int32
    x_test: np.ndarray  # (360, 8, 8, 1)
    y_test: np.ndarray  # (360,)


def load_data(split_seed: int = 0) -> Data:
    """scikit-learn's digits, split 80/20 by one fixed random permutation.

    The split is the same for every run, so a seed varies only the
    initialization and the batch order.
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    return Data(images[train], labels[train], images[test], labels[test])


def norm_layer(norm: str, train: bool, renorm_limits=None, momentum: float = 0.99):
    """One normalization layer of kind ``norm`` (a key of :data:`NORMS`), from ``jaxnorm.linen``.

    The BatchNorm family normalizes with the batch's statistics when
    ``train`` (and updates its running averages with ``momentum``), with the
    running averages otherwise; GroupNorm normalizes each example by itself
    either way. ``renorm_limits`` is Batch Renorm's ``(r_max, d_max)``.
    """
    if norm == "batch":
        return jnl.BatchNorm(use_running_average=not train, momentum=momentum)
    if norm == "group":
        return jnl.GroupNorm(num_groups=8)
    if norm == "renorm":
        layer = jnl.BatchRenorm(use_running_average=not train, momentum=momentum)
        r_max, d_max = RENORM_FINAL if renorm_limits is None else renorm_limits
        return functools.partial(layer, r_max=r_max, d_max=d_max)
    if norm == "representative":
        return jnl.RepresentativeBatchNorm(use_running_average=not train, momentum=momentum)
    raise ValueError(f"norm_layer: unknown norm {norm!r}; choose one of {sorted(NORMS)}")


class DigitsCNN(nn.Module):
    """conv3×3(32)–norm–relu, conv3×3/2(64)–norm–relu, conv3×3/2(64)–norm–relu, mean, dense(10).

    The feature maps are 8×8, 4×4 and 2×2: a BatchNorm channel of the last
    block sees 4 values per example, so 8 values in a batch of 2.
    """

    norm: str = "batch"
    momentum: float = 0.99  # of the running averages (jaxnorm's and Flax's default)

    @nn.compact
    def __call__(self, x, train: bool, renorm_limits=None):
        for width, stride in ((32, 1), (64, 2), (64, 2)):
            x = nn.Conv(width, (3, 3), strides=stride, use_bias=False)(x)
            x = norm_layer(self.norm, train, renorm_limits, self.momentum)(x)
            x = nn.relu(x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(10)(x)


def batch_plan(labels: np.ndarray, batch_size: int, epochs: int, seed: int, order: str = "shuffled") -> np.ndarray:
    """Training-set indices of every batch of a run, shape ``(steps, batch_size)``.

    Each epoch takes a fresh random :data:`EXAMPLES_PER_EPOCH` examples.
    ``order="shuffled"``: i.i.d. batches. ``order="by_class"``: the epoch's
    examples are sorted by label, cut into consecutive batches, and the
    batches shuffled; each batch holds one or two classes as long as the
    batch is smaller than a class (about 140 examples).
    """
    if EXAMPLES_PER_EPOCH % batch_size:
        raise ValueError(f"batch_plan: batch_size={batch_size} must divide {EXAMPLES_PER_EPOCH}")
    if order not in ("shuffled", "by_class"):
        raise ValueError(f"batch_plan: order must be 'shuffled' or 'by_class', got {order!r}")
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(epochs):
        chosen = rng.permutation(len(labels))[:EXAMPLES_PER_EPOCH]
        if order == "by_class":
            chosen = chosen[np.argsort(labels[chosen], kind="stable")]
            batches = chosen.reshape(-1, batch_size)
            batches = batches[rng.permutation(len(batches))]
        else:
            batches = chosen.reshape(-1, batch_size)
        plan.append(batches)
    return np.concatenate(plan).astype(np.int32)


def renorm_limits(step, total_steps: int):
    """Batch Renorm's ``(r_max, d_max)`` at ``step``: the paper's schedule, scaled to the run.

    Plain BatchNorm for the first 5% of the steps, then ``d_max`` grows to 5
    by 25% and ``r_max`` to 3 by 40% of the run (the paper: 5k, 25k and 40k
    steps), by :func:`jaxnorm.batch_renorm_schedule`.
    """
    warmup = max(1, int(0.05 * total_steps))
    return jn.batch_renorm_schedule(
        step, r_max=RENORM_FINAL[0], d_max=RENORM_FINAL[1], warmup_steps=warmup,
        d_max_steps=max(warmup + 1, int(0.25 * total_steps)),
        r_max_steps=max(warmup + 1, int(0.40 * total_steps)),
    )


@functools.lru_cache(maxsize=None)
def _train_step(norm: str, steps: int, momentum: float, weight_decay: float):
    """The optimizer and jitted training step of a run of ``steps`` steps (cached: one compile per shape).

    ``optax.sgd`` is ``trace(momentum)`` then a scale by ``-lr``; the scale is
    done here so that the peak learning rate is an argument, not a constant
    compiled in.
    """
    model = DigitsCNN(norm=norm)
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))

    @jax.jit
    def step(params, stats, opt_state, t, peak_lr, x, y):
        limits = renorm_limits(t, steps) if norm == "renorm" else None

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True,
                renorm_limits=limits, mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates.get("batch_stats", {})

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        lr = peak_lr * 0.5 * (1 + jnp.cos(jnp.pi * t / steps))  # cosine decay to 0
        params = jax.tree.map(lambda p, u: p - lr * u, params, direction)
        return params, stats, opt_state, loss

    return optimizer, step


@functools.lru_cache(maxsize=None)
def _init_fn(norm: str):
    model = DigitsCNN(norm=norm)
    return jax.jit(lambda key: model.init(key, jnp.zeros((2, 8, 8, 1)), train=False))


def initial_variables(norm: str, seed: int):
    """A fresh :class:`DigitsCNN`'s ``(params, batch_stats)`` for ``seed``, the same at every batch size.

    The key uses the ``"rbg"`` generator: on the CPU a jitted Flax ``init``
    compiles several times faster with it than with the default threefry.
    """
    variables = _init_fn(norm)(jax.random.key(seed, impl="rbg"))
    return variables["params"], variables.get("batch_stats", {})


class Trained(NamedTuple):
    """The result of :func:`train`: one trained network per seed."""

    model: DigitsCNN
    variables: list  # per seed: {"params": ..., "batch_stats": ...} (batch_stats empty for GroupNorm)
    epoch_loss: np.ndarray  # (seeds, epochs): mean training-mode loss of each epoch


def train(
    norm: str,
    batch_size: int,
    *,
    seeds,
    epochs: int,
    data: Data,
    order: str = "shuffled",
    base_lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> Trained:
    """Train one :class:`DigitsCNN` with norm layer ``norm`` per seed.

    SGD with momentum and weight decay. The peak learning rate is
    ``base_lr · batch_size / 32`` (linear scaling, as in the GroupNorm
    paper) and decays to 0 on a cosine over the run; every batch size sees
    ``epochs · 1408`` examples. The training-mode forward pass updates the
    running statistics (``mutable=["batch_stats"]``). A seed sets the
    initialization and the batch order. (A Python loop over a jitted step:
    on XLA:CPU it is faster here than ``lax.scan`` or ``vmap`` over seeds.)
    """
    steps = epochs * (EXAMPLES_PER_EPOCH // batch_size)
    optimizer, step = _train_step(norm, steps, momentum, weight_decay)
    peak_lr = np.float32(base_lr * batch_size / BASE_BATCH)
    variables, epoch_loss = [], []
    for seed in seeds:
        params, stats = initial_variables(norm, seed)
        opt_state = optimizer.init(params)
        losses = []
        for t, idx in enumerate(batch_plan(data.y_train, batch_size, epochs, seed, order)):
            params, stats, opt_state, loss = step(
                params, stats, opt_state, np.int32(t), peak_lr, data.x_train[idx], data.y_train[idx]
            )
            losses.append(loss)
        variables.append({"params": params, "batch_stats": stats})
        epoch_loss.append(np.asarray(jnp.stack(losses)).reshape(epochs, -1).mean(-1))
    return Trained(DigitsCNN(norm=norm), variables, np.stack(epoch_loss))


@functools.partial(jax.jit, static_argnums=0)
def _population_stats(model, variables, x):
    limits = (1.0, 0.0) if model.norm == "renorm" else None  # Batch Renorm as plain BatchNorm
    _, updates = model.apply(variables, x, train=True, renorm_limits=limits, mutable=["batch_stats"])
    return updates["batch_stats"]


def with_population_stats(trained: Trained, x) -> Trained:
    """``trained`` with its running averages replaced by the exact statistics of ``x`` at the final weights.

    One training-mode pass over all of ``x`` (the whole training set) as a
    single batch, with running-average momentum 0, so each layer's stored
    mean and variance are those of the full set given the layers below it
    (the "precise BN" recipe). Batch Renorm makes this pass as plain
    BatchNorm (``r_max=1, d_max=0``). GroupNorm networks are returned as they are.
    """
    if trained.model.norm == "group":
        return trained
    model = trained.model.clone(momentum=0.0)
    variables = [
        {"params": v["params"], "batch_stats": _population_stats(model, v, x)} for v in trained.variables
    ]
    return trained._replace(variables=variables)


@functools.partial(jax.jit, static_argnums=0)
def _correct_running(model, variables, x, y):
    return jnp.argmax(model.apply(variables, x, train=False), -1) == y


@functools.partial(jax.jit, static_argnums=0)
def _correct_batch_stats(model, variables, xb, yb):
    def one_batch(x):
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.argmax(logits, -1)

    return jax.vmap(one_batch)(xb) == yb


def accuracy_running(trained: Trained, x, y) -> np.ndarray:
    """Accuracy of each seed's network in inference mode (running averages), shape ``(seeds,)``."""
    return np.array([float(_correct_running(trained.model, v, x, y).mean()) for v in trained.variables])


def eval_batches(labels: np.ndarray, batch_size: int, *, order: str = "shuffled", repeats: int = 4, seed: int = 0):
    """Test-set indices cut into batches, ``(repeats · n, batch_size)``, for training-mode evaluation.

    Each repeat is a fresh permutation with the remainder dropped; with
    ``order="by_class"`` each repeat is sorted by label before it is cut, so
    each batch holds one or two classes, as in by-class training.
    """
    rng = np.random.default_rng(seed)
    usable = len(labels) // batch_size * batch_size
    out = []
    for _ in range(repeats):
        chosen = rng.permutation(len(labels))[:usable]
        if order == "by_class":
            chosen = chosen[np.argsort(labels[chosen], kind="stable")]
        out.append(chosen.reshape(-1, batch_size))
    return np.concatenate(out).astype(np.int32)


def accuracy_batch_stats(trained: Trained, x, y, batches: np.ndarray) -> np.ndarray:
    """Accuracy of each seed's network in training mode: each test batch normalized by its own statistics.

    ``batches`` holds ``(n, batch_size)`` indices (see :func:`eval_batches`);
    the running averages are read (Batch Renorm's corrections use them, with
    its final limits ``r_max=3, d_max=5``) but not updated. Shape ``(seeds,)``.
    """
    xb, yb = x[batches], y[batches]
    return np.array([float(_correct_batch_stats(trained.model, v, xb, yb).mean()) for v in trained.variables])
