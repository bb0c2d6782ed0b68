"""Train a small CNN with jaxnorm.linen modules on scikit-learn's digits.

The 8×8 handwritten digits that ship inside scikit-learn (1797 images, 10
classes) are split 80/20 into training and test sets. The network uses
jaxnorm's BatchNorm (running statistics in ``batch_stats``), GroupNorm and
LayerNorm; the train step is jit-compiled and updates the running
statistics (``mutable=["batch_stats"]``); evaluation uses the running
averages. Prints a progress bar and the final test accuracy.

    python -m pip install -e ".[examples]"
    python examples/train_digits.py [--epochs 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from sklearn.datasets import load_digits

from jaxnorm import linen as jnl


class DigitsCNN(nn.Module):
    """conv-BN-relu, conv-GN-relu, global mean, dense-LN-relu, dense."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(32, (3, 3))(x)
        x = nn.relu(jnl.BatchNorm(use_running_average=not train)(x))
        x = nn.Conv(64, (3, 3), strides=(2, 2))(x)
        x = nn.relu(jnl.GroupNorm(num_groups=8)(x))
        x = x.mean(axis=(1, 2))
        x = nn.relu(jnl.LayerNorm()(nn.Dense(64)(x)))
        return nn.Dense(10)(x)


def load(seed: int):
    """Digits as (N, 8, 8, 1) float32 in [0, 1], split 80/20 with a fixed permutation."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    return (images[train], labels[train]), (images[test], labels[test])


def progress(done: int, total: int, text: str) -> None:
    filled = int(30 * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {text}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def train(epochs: int = 30, seed: int = 0, batch_size: int = 64, learning_rate: float = 3e-3) -> dict:
    """Train and evaluate; returns the final metrics."""
    (x_train, y_train), (x_test, y_test) = load(seed)
    model = DigitsCNN()
    variables = model.init(jax.random.key(seed), x_train[:batch_size], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    steps_per_epoch = len(x_train) // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, batch_stats, opt_state, x, y):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    @jax.jit
    def accuracy(params, batch_stats, x, y):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state, x_train[idx], y_train[idx])
        progress(epoch, epochs, f"epoch loss {float(loss):.3f}")
    seconds = time.perf_counter() - start
    return {
        "train_accuracy": float(accuracy(params, batch_stats, x_train, y_train)),
        "test_accuracy": float(accuracy(params, batch_stats, x_test, y_test)),
        "seconds": seconds,
        "epochs": epochs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    metrics = train(epochs=args.epochs, seed=args.seed)
    print(f"test accuracy {metrics['test_accuracy']:.4f} (train {metrics['train_accuracy']:.4f}) "
          f"after {metrics['epochs']} epochs in {metrics['seconds']:.1f} s on {jax.devices()[0].platform}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
