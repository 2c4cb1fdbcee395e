"""Progress of a long loop on standard error: a tqdm bar on a terminal, plain lines in a log.

A bar redrawn in place is unreadable in a log file, and a log that stays empty for twenty minutes
looks like a hung run. So when the stream is not a terminal, `Progress` writes whole lines
instead: one at the start, then after every tenth of the steps or every 30 seconds, whichever
comes first, and one at the end, each flushed at once so that `tail -f` sees it:

    pretrain 240/2400 (10%) 55 s loss 3.214
"""

from __future__ import annotations

import math
import sys
from time import monotonic
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_SECONDS = 30.0


class Progress:
    """Report `done/total` steps with the latest status text; silent when disabled.

    Args:
        total: Number of steps.
        label: What is running (`pretrain`, `lora/cifar100`, ...), at the start of the bar or line.
        enabled: Report at all (callers pass False for `--quiet`, non-zero ranks, ...).
        stream: Where to write (standard error by default): a bar if it is a TTY, else plain lines.
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.text = ""
        terminal = self.stream.isatty()
        self.bar = tqdm(total=self.total, desc=label, file=self.stream) if enabled and terminal else None
        self.lines = enabled and not terminal
        self.every = math.ceil(self.total / 10)
        self.started = monotonic()
        self.written_done = -1  # `done` at the last line; -1 before the first
        self.written_at = self.started
        if self.lines:
            self._write_line()

    def update(self, steps: int = 1, text: str = "") -> None:
        """Advance by `steps`; `text` (a loss, an epoch, ...) replaces the previous one."""
        self.done += steps
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(steps)
        elif self.lines and (
            self.done - self.written_done >= self.every
            or monotonic() - self.written_at >= LINE_EVERY_SECONDS
            or (self.done >= self.total and self.written_done < self.total)
        ):
            self._write_line()

    def close(self) -> None:
        """Finish the bar, or write the last line if it has not been written yet."""
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.done != self.written_done:
            self._write_line()

    def _write_line(self) -> None:
        self.written_done, self.written_at = self.done, monotonic()
        percent = 100 * self.done // self.total
        line = f"{self.label} {self.done}/{self.total} ({percent}%) {self.written_at - self.started:.0f} s {self.text}"
        self.stream.write(line.rstrip() + "\n")
        self.stream.flush()
