"""A steady glibc allocator for benchmarks: fresh buffers without page faults.

XLA:CPU takes every buffer from ``malloc``. glibc serves large requests
with a fresh ``mmap`` (always from 32 MiB, and from smaller sizes while its
dynamic threshold is low), and a fresh mapping faults once per 4 KiB page
when first written: about 1.3 µs each here, so a 32 MiB output costs 8192
faults and roughly five times its copy time (``benchmarks/studies/page_faults.py``).
Whether a 16 MiB buffer is mapped afresh depends on what the process freed
before, so one program can fault thousands of times per call in one run and
never in the next, and a jaxnorm/flax ratio can move by 2× between runs.

:data:`STEADY_TUNABLES` makes glibc serve every buffer from one heap and
keep freed memory there, so a buffer reused call after call is faulted in
once (``benchmarks/studies/page_faults.py`` under it: no faults from 8 to 32 MiB,
1.8 ms for the 32 MiB pass that took 10.7 ms with 8193 faults without it). One heap, because XLA's worker threads
allocate too, and the extra per-thread heaps glibc would give them return
freed pages to the system regardless (819 faults per call for RMSNorm's
forward+backward at 16×32×32×256 without it, none with it). A benchmark run under it measures the kernels
rather than the allocator's state; the default allocator is what a user's
process gets. glibc reads ``GLIBC_TUNABLES`` once, at
start-up, so :func:`reexec_steady` restarts the script with it set.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "STEADY_TUNABLES", "add_allocator_option", "apply_allocator_option", "glibc_tunables", "reexec_steady",
    "steady_env", "steady_in_effect",
]

STEADY_TUNABLES = (
    "glibc.malloc.mmap_max=0"                  # every buffer from the heap, none mapped afresh
    ":glibc.malloc.trim_threshold=4294967295"  # freed heap stays mapped for the next call
    ":glibc.malloc.arena_max=1"                # one heap: XLA's threads' arenas would be trimmed
)


def glibc_tunables(environ=None) -> str | None:
    """The ``GLIBC_TUNABLES`` this process started with (None when unset)."""
    return (os.environ if environ is None else environ).get("GLIBC_TUNABLES")


def steady_in_effect(environ=None) -> bool:
    """Whether this process started with :data:`STEADY_TUNABLES` in its ``GLIBC_TUNABLES``."""
    return STEADY_TUNABLES in (glibc_tunables(environ) or "")


def steady_env(environ=None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with :data:`STEADY_TUNABLES` appended.

    Tunables already set are kept in front; glibc applies them in order, so
    the steady settings win where both name the same one.
    """
    env = dict(os.environ if environ is None else environ)
    current = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = STEADY_TUNABLES if not current else f"{current}:{STEADY_TUNABLES}"
    return env


def reexec_steady(argv: list[str]) -> None:
    """Restart this Python script under :data:`STEADY_TUNABLES`, unless it already runs so.

    Args:
      argv: the script's command line (``sys.argv``), run again unchanged.

    Returns:
      Only when the tunables are already in effect (nothing to do); otherwise
      the process is replaced (``os.execve``).
    """
    if steady_in_effect():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], steady_env())


def add_allocator_option(parser) -> None:
    """Give a benchmark script's ``argparse`` parser an ``--allocator {default,steady}`` option."""
    parser.add_argument("--allocator", choices=("default", "steady"), default="default",
                        help="steady: rerun under glibc settings without page faults on fresh buffers")


def apply_allocator_option(args, argv, parser) -> None:
    """Act on ``--allocator``: for "steady", restart the script under :data:`STEADY_TUNABLES`.

    Args:
      args: the parsed arguments.
      argv: what the script's ``main`` was given: None when run from the
        command line. A call from within a process (``main([...])``) cannot
        change glibc's settings, so it is refused rather than mislabelled.
      parser: for the error.
    """
    if args.allocator != "steady" or steady_in_effect():
        return
    if argv is not None:
        parser.error("--allocator steady: glibc reads its settings at start-up; run the script itself")
    reexec_steady(sys.argv)
