"""Page faults per call: what touching freshly mapped memory costs a jitted function.

On Linux, glibc's ``malloc`` serves large blocks (from 32 MiB at the most,
less while its threshold has not adapted) with a fresh ``mmap`` and unmaps
them on free, so every call that allocates such a buffer page-faults once per
4 KiB page as it first writes it, and the kernel zero-fills each page. At
those sizes the faults, not the arithmetic, can set the time of a whole
forward+backward; counting them tells the two apart.

Uses: no other jaxnorm module.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

try:
    import resource
except ImportError:  # not on Windows
    resource = None

__all__ = ["page_faults_per_call"]


def page_faults_per_call(fn: Callable[[], object], *, calls: int = 5) -> float | None:
    """Mean minor page faults of this process per call of ``fn``, after one untimed call.

    Args:
      fn: a zero-argument callable, typically a closure over a jitted function;
        each call is followed by ``jax.block_until_ready`` on its result.
      calls: how many calls to average over.

    Returns:
      The mean count, or None where ``resource.getrusage`` is unavailable.
      It counts the whole process, so run nothing else meanwhile.
    """
    if resource is None:
        return None
    jax.block_until_ready(fn())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        jax.block_until_ready(fn())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls
