"""Spectral Normalization (Miyato et al. 2018): a kernel divided by its largest singular value.

Uses: jaxnorm._core (moments, validate), jaxnorm._schemes.weight
(weight_setup).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxnorm._core import validate as check
from jaxnorm._core.moments import compute_dtype
from jaxnorm._schemes.weight.weight_setup import check_weight

__all__ = ["spectral_norm", "spectral_norm_init", "spectral_norm_sigma"]

_FIX = (
    "a vector's spectral norm is its L2 norm: use weight_norm(v, g, feature_axis=None), "
    "or reshape it to a (1, n) matrix"
)


def _replicated(w):
    """``w`` itself, or a replicated copy when its type says it is sharded (explicit axes).

    The matrix view merges the kernel's axes and the power iteration
    contracts over all of them, which JAX will not do on an explicitly
    sharded array without being told the result's layout; kernels are small,
    so the iteration runs on a gathered copy (``w / σ`` keeps ``w``'s layout).
    """
    sharding = getattr(jax.typeof(w), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or all(s is None for s in spec):
        return w
    return jax.sharding.reshard(w, NamedSharding(sharding.mesh, PartitionSpec()))


def _as_matrix(fn, w, feature_axis):
    """``w`` as the ``(features, rest)`` matrix of the paper."""
    w, axis, _ = check_weight(fn, w, feature_axis, fix=_FIX)
    rows = w.shape[axis]
    return w, axis, jnp.moveaxis(_replicated(w), axis, 0).reshape(rows, -1)


def _check_u(fn, u, rows, w_shape):
    u, _ = check.check_param(fn, "u", u, {"one entry per output feature": (rows,)}, w_shape)
    if u is None:
        raise TypeError(f"{fn}: u is required, got None; start from spectral_norm_init(key, w)")
    return u


def _l2_normalize(t, epsilon):
    """``t / max(‖t‖, ε)`` (PyTorch's ``F.normalize``); 0 for ``t = 0`` even when ε = 0."""
    denominator = jnp.maximum(jnp.sqrt(jnp.sum(t * t)), epsilon)
    return t / jnp.where(denominator > 0, denominator, 1)


def _power_iteration(mat, u, n_iterations, epsilon, recover_from_zero=True):
    """``n_iterations`` of ``v ← N(Wᵀu), u ← N(Wv)``; returns ``(u, v)`` (no gradient).

    A step whose ``Wv`` is exactly 0 (a zero kernel, or ``u = 0``) keeps the
    previous ``u`` with ``recover_from_zero``, so the iteration recovers
    once the kernel is no longer zero; without it ``u`` becomes 0 (flax's
    SpectralNorm), and from ``u = 0`` every later step gives 0 again. A
    Python loop (``n_iterations`` is static): no ``while`` loop in the
    program, which GPUs and TPUs run as host-synchronized control flow.
    """
    mat = lax.stop_gradient(mat)
    v_ = None
    for _ in range(n_iterations):
        v_ = _l2_normalize(mat.T @ u, epsilon)
        wv = mat @ v_
        u_next = _l2_normalize(wv, epsilon)
        u = jnp.where(jnp.any(wv != 0), u_next, u) if recover_from_zero else u_next
    return lax.stop_gradient(u), lax.stop_gradient(v_)


def _check_recover(fn, recover_from_zero):
    if not isinstance(recover_from_zero, bool):
        raise TypeError(
            f"{fn}: recover_from_zero must be a Python bool, got {recover_from_zero!r} of type "
            f"{type(recover_from_zero).__name__}; True keeps u at a zero kernel (jaxnorm), False "
            f"sets it to 0 (flax's SpectralNorm)"
        )
    return recover_from_zero


def _sigma(fn, w, u, n_iterations, epsilon, feature_axis, recover_from_zero=True):
    """Validated ``(w, u, σ, new_u, dtype)``; σ is the safe (never 0) estimate in ``dtype``."""
    w, _, mat = _as_matrix(fn, w, feature_axis)
    u_in = _check_u(fn, u, mat.shape[0], w.shape)
    n_iterations = check.check_positive_int(fn, "n_iterations", n_iterations, example=1)
    epsilon = check.check_epsilon(fn, epsilon)
    recover_from_zero = _check_recover(fn, recover_from_zero)
    dtype = compute_dtype(jnp.promote_types(w.dtype, u_in.dtype))
    mat = mat.astype(dtype)
    u_new, v_new = _power_iteration(mat, u_in.astype(dtype), n_iterations, epsilon, recover_from_zero)
    sigma = u_new @ (mat @ v_new)
    # A zero kernel (σ = 0 exactly) reads as σ = 1, so that w / σ is w itself (0),
    # with the zero derivative of the untaken branch rather than 0/0.
    safe_sigma = jnp.where(sigma != 0, sigma, 1)
    return w, u_in, safe_sigma, u_new.astype(u_in.dtype), dtype


def spectral_norm_sigma(w, u, *, n_iterations: int = 1, epsilon: float = 1e-12, feature_axis: int = -1,
                        recover_from_zero: bool = True):
    """The spectral norm ``σ`` of a kernel, estimated by power iteration from ``u``.

    The estimate by which :func:`spectral_norm` divides: ``w`` is viewed as
    the matrix ``W`` of shape ``(w.shape[feature_axis], rest)`` and
    ``n_iterations`` steps of the paper's Algorithm 1 (Miyato et al., ICLR
    2018; ``N(t) = t / max(‖t‖, ε)``) are taken from ``u``::

        v ← N(Wᵀu),   u ← N(W v),   σ = uᵀ W v

    so that ``spectral_norm(w, u, ...)[0] == w / spectral_norm_sigma(w, u,
    ...)[0]`` for every kernel. ``u`` and ``v`` carry no gradient; ``σ`` is
    differentiated through ``W`` (``∂σ/∂W = u vᵀ``), as in the paper,
    flax.linen and PyTorch. Use it to log the estimate, to store it (as
    flax.linen's ``SpectralNorm`` does in ``batch_stats``), or to scale by
    ``σ`` in a way of one's own.

    A zero kernel has ``σ = 0``; it is returned as ``σ = 1`` (with zero
    derivative), so that ``w / σ`` is the kernel itself (0) and finite with
    finite derivatives, never 0/0; ``u`` is then kept, or set to 0 with
    ``recover_from_zero=False`` (see :func:`spectral_norm`). Any other
    kernel gives ``σ > 0`` from any ``u ≠ 0`` not orthogonal to its range.

    Args:
      w: the kernel, rank >= 2, e.g. ``(in, out)`` or ``(H, W, in, out)``.
      u: ``(w.shape[feature_axis],)`` estimate of the first left singular
        vector (:func:`spectral_norm_init`); need not be normalized.
      n_iterations: power-iteration steps, >= 1.
      epsilon: floor of the norms in ``N``.
      feature_axis: the output-feature axis (-1 for Flax kernels, 0 for
        PyTorch's ``(out, in, ...)``).
      recover_from_zero: at a step where ``Wv = 0``, keep ``u`` (True,
        default) or set it to 0 (False, flax's SpectralNorm), as in
        :func:`spectral_norm`.

    Returns:
      ``(sigma, new_u)``: the scalar ``σ`` in the promoted dtype of ``w`` and
      ``u`` (computed in at least float32), and the updated ``u`` in ``u``'s
      dtype (no gradient).

    Raises:
      TypeError: integer inputs, non-int settings, a non-bool
        ``recover_from_zero``.
      ValueError: a kernel of rank < 2 (a vector), ``u`` of the wrong
        shape, ``n_iterations <= 0``, a negative epsilon.
    """
    w, u_in, sigma, u_new, _ = _sigma(
        "spectral_norm_sigma", w, u, n_iterations, epsilon, feature_axis, recover_from_zero
    )
    return sigma.astype(jnp.promote_types(w.dtype, u_in.dtype)), u_new


def spectral_norm(w, u, *, n_iterations: int = 1, epsilon: float = 1e-12, feature_axis: int = -1,
                  recover_from_zero: bool = True):
    """Spectral normalization (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018).

    ``w`` is viewed as the matrix ``W`` of shape ``(w.shape[feature_axis],
    rest)``; ``n_iterations`` power-iteration steps from ``u`` (the paper's
    Algorithm 1, with ``N(t) = t / max(‖t‖, ε)``)::

        v ← N(Wᵀu),   u ← N(W v)
        σ = uᵀ W v,   w_SN = w / σ

    ``u`` and ``v`` carry no gradient (as in the paper, flax.linen and
    PyTorch); ``σ = uᵀWv`` is differentiated through ``W``. Feed the
    returned ``u`` to the next step; :func:`spectral_norm_sigma` returns
    ``σ`` itself. A zero kernel gives ``σ = 0`` and the
    kernel itself (0) rather than 0/0, with finite derivatives.
    Convolution kernels ``(H, W, in, out)`` are handled as ``(out, H·W·in)``
    matrices.

    Zero kernels across steps. At a step where ``Wv = 0`` (a zero kernel,
    common for zero-initialized biases of rank 2), the default
    ``recover_from_zero=True`` keeps ``u``, so once the kernel leaves zero
    it is divided by its ``σ``. ``recover_from_zero=False`` is flax's
    SpectralNorm: ``u`` becomes 0, and from ``u = 0`` every later ``σ`` is
    0, so that kernel is never normalized again (it is used as it is).
    The two differ from the step after a zero kernel on, whatever the
    kernel becomes.

    Args:
      w: the kernel, rank >= 2, e.g. ``(in, out)`` or ``(H, W, in, out)``.
      u: ``(w.shape[feature_axis],)`` estimate of the first left singular
        vector (:func:`spectral_norm_init`); need not be normalized.
      n_iterations: power-iteration steps, >= 1.
      epsilon: floor of the norms in ``N``.
      feature_axis: the output-feature axis (-1 for Flax kernels, 0 for
        PyTorch's ``(out, in, ...)``).
      recover_from_zero: keep ``u`` at a step where ``Wv = 0`` (True,
        default) or set it to 0 (False, flax's behaviour); see above.

    Returns:
      ``(w / σ, new_u)``: the normalized kernel in ``w``'s dtype, and the
      updated ``u`` in ``u``'s dtype (no gradient).

    Raises:
      TypeError: integer inputs, non-int settings, a non-bool
        ``recover_from_zero``.
      ValueError: a kernel of rank < 2 (a vector), ``u`` of the wrong
        shape, ``n_iterations <= 0``, a negative epsilon.
    """
    w, _, sigma, u_new, dtype = _sigma(
        "spectral_norm", w, u, n_iterations, epsilon, feature_axis, recover_from_zero
    )
    return (w.astype(dtype) / sigma).astype(w.dtype), u_new


def spectral_norm_init(key, w, *, n_iterations: int = 15, epsilon: float = 1e-12, feature_axis: int = -1):
    """A starting ``u`` for :func:`spectral_norm`: random, then refined on ``w``.

    A unit vector of independent normal entries, followed by
    ``n_iterations`` power-iteration steps on ``w`` (PyTorch runs 15 when it
    registers the parametrization), so that the first normalized kernel
    already uses a good estimate of σ.

    Args:
      key: a ``jax.random`` key.
      w: the initial kernel.
      n_iterations: warm-up steps, >= 0.
      epsilon, feature_axis: as in :func:`spectral_norm`.

    Returns:
      ``u`` of shape ``(w.shape[feature_axis],)`` in the compute dtype of ``w``.

    Raises:
      TypeError, ValueError: as :func:`spectral_norm` (0 steps allowed).
    """
    fn = "spectral_norm_init"
    w, _, mat = _as_matrix(fn, w, feature_axis)
    n_iterations = check.check_positive_int(fn, "n_iterations", n_iterations, example=15, minimum=0)
    epsilon = check.check_epsilon(fn, epsilon)
    dtype = compute_dtype(w.dtype)
    u = _l2_normalize(jax.random.normal(key, (mat.shape[0],), dtype), epsilon)
    if n_iterations:
        u, _ = _power_iteration(mat.astype(dtype), u, n_iterations, epsilon)
    return u
