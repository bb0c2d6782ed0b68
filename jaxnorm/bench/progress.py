"""A minimal progress bar on standard error (no dependency).

Uses: no other jaxnorm module.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """``[#####.....] 3/8  layer_norm (0:07)``, redrawn in place on a terminal.

    Off a terminal (logs, CI) each step is one line instead.
    """

    def __init__(self, total: int, *, width: int = 24, stream=None, enabled: bool = True):
        self.total = max(total, 1)
        self.done = 0
        self.width = width
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self, label: str) -> None:
        """Record that one more unit finished, labelled ``label``."""
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        seconds = int(time.perf_counter() - self.start)
        text = f"[{bar}] {self.done}/{self.total}  {label} ({seconds // 60}:{seconds % 60:02d})"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
