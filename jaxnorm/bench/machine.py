"""What a benchmark ran on: machine, backend, versions and date.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform

import jax

__all__ = ["machine_info"]

_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "triton", "jax-triton")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """A JSON-ready description of this machine and the software versions."""
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "device_count": len(devices),
        "versions": {n: v for n in _PACKAGES if (v := _version(n)) is not None},
        # glibc's allocator settings: they decide whether fresh buffers page-fault
        # (harness.allocator); None is glibc's default.
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }
