"""Choosing the implementation behind a function: ``"xla"`` or ``"triton"``."""

from __future__ import annotations

__all__ = ["IMPLEMENTATIONS", "resolve_implementation"]

IMPLEMENTATIONS = (None, "xla", "triton")


def resolve_implementation(fn: str, implementation) -> str:
    """Return the implementation to run for ``implementation`` (JAX's spelling).

    ``None`` picks the best available one; today that is always ``"xla"``,
    the pure-JAX reference path. ``"triton"`` names the optional GPU kernels,
    which this release does not ship yet.

    Raises:
      ValueError: for an unknown name, or ``"triton"`` when unavailable.
    """
    if implementation is None or implementation == "xla":
        return "xla"
    if implementation == "triton":
        raise ValueError(
            f"{fn}: implementation='triton' needs jaxnorm's Triton GPU kernels, "
            f"which this version of jaxnorm does not include; use "
            f"implementation=None or 'xla'"
        )
    raise ValueError(
        f"{fn}: implementation must be one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}; use implementation=None to pick automatically"
    )
