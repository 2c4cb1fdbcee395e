"""Progress output: a tqdm bar on a terminal, a bounded number of plain flushed lines elsewhere
(log files, pipes, CI), and nothing when disabled."""

from __future__ import annotations

import io
import re

import pytest

pytest.importorskip("tqdm")

from peft_atlas.bench import progress as progress_module  # noqa: E402
from peft_atlas.bench.progress import Progress  # noqa: E402


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Log(io.StringIO):
    """A log file that remembers what had been written each time it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


class Clock:
    """A stand-in for `time.monotonic` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "monotonic", fake)
    return fake


def _run(stream: io.StringIO, total: int, label: str = "pretrain", **kwargs: bool) -> None:
    bar = Progress(total, label, stream=stream, **kwargs)
    for step in range(1, total + 1):
        bar.update(1, f"loss {step / total:.3f}")
    bar.close()


def test_a_log_gets_a_first_line_a_line_every_tenth_and_a_last_line(clock: Clock) -> None:
    log = Log()
    _run(log, 1000)
    lines = log.getvalue().splitlines(keepends=True)
    assert all(line.endswith("\n") and "\r" not in line and "\x1b" not in line for line in lines)
    assert [int(re.match(r"pretrain (\d+)/1000 ", line)[1]) for line in lines] == list(range(0, 1001, 100))
    assert lines[0] == "pretrain 0/1000 (0%) 0 s\n"
    assert lines[5] == "pretrain 500/1000 (50%) 0 s loss 0.500\n"
    assert lines[-1] == "pretrain 1000/1000 (100%) 0 s loss 1.000\n"
    assert log.flushed == ["".join(lines[: n + 1]) for n in range(len(lines))]  # each line flushed at once


def test_a_log_gets_a_line_after_30_seconds_even_between_tenths(clock: Clock) -> None:
    log = io.StringIO()
    bar = Progress(1000, "lora/cifar100", stream=log)
    for step in range(1, 8):
        clock.now += 5.0
        bar.update(1, f"batch {step}")
    assert log.getvalue().splitlines() == ["lora/cifar100 0/1000 (0%) 0 s", "lora/cifar100 6/1000 (0%) 30 s batch 6"]
    clock.now += 24.0
    bar.update(1)
    assert len(log.getvalue().splitlines()) == 2  # 29 s since the last line, and not a tenth yet
    clock.now += 1.0
    bar.update(1, "batch 9")
    assert log.getvalue().splitlines()[-1] == "lora/cifar100 9/1000 (0%) 60 s batch 9"


def test_closing_early_writes_the_last_line_once(clock: Clock) -> None:
    log = io.StringIO()
    bar = Progress(1000, "pretrain", stream=log)
    bar.update(50, "loss 2.000")
    bar.close()
    bar.close()
    assert log.getvalue().splitlines() == ["pretrain 0/1000 (0%) 0 s", "pretrain 50/1000 (5%) 0 s loss 2.000"]


def test_a_terminal_gets_a_tqdm_bar_with_label_count_and_text() -> None:
    terminal = Terminal()
    _run(terminal, 40, label="lora/cifar100")
    out = terminal.getvalue()
    assert "\r" in out  # redrawn in place, not one line per update
    final = out.rstrip("\n").rsplit("\r", 1)[-1]
    assert final.startswith("lora/cifar100:")
    assert "40/40" in final and "loss 1.000" in final and "100%" in final
    assert "(100%)" not in out  # not the plain lines meant for logs


@pytest.mark.parametrize("stream", [Terminal, io.StringIO])
def test_disabled_prints_nothing(stream: type[io.StringIO]) -> None:
    quiet = stream()
    _run(quiet, 40, enabled=False)
    assert quiet.getvalue() == ""
