"""One look for every long loop: a rich progress bar on a terminal, plain progress lines in a log.

When stderr is not a terminal (output sent to a file, a pipe, CI), a live bar would print nothing useful (or
blank lines): `progress_bar` then returns `PlainProgress`, which writes "stage: n/N, elapsed, live numbers" lines
to stderr, at most one every $SCORE_PROGRESS_EVERY seconds (default 10) per stage, plus the last. Worker
processes that share a terminal (`score leaderboard --jobs`) set $SCORE_LOG_TAG: plain lines, each one tagged.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(transient: bool = False) -> Progress | PlainProgress:
    """A progress display for one loop; `transient` ones (short inner loops) vanish when done."""
    if not sys.stderr.isatty() or os.environ.get("SCORE_LOG_TAG"):  # two live bars would overwrite each other
        return PlainProgress(transient=transient)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=transient,
    )


def log(message: str) -> None:
    """One status line on stderr with the time of day, whole (never wrapped): greppable in a log."""
    tag = f"{os.environ['SCORE_LOG_TAG']}: " if os.environ.get("SCORE_LOG_TAG") else ""
    print(f"[{time.strftime('%H:%M:%S')}] {tag}{message}", file=sys.stderr, flush=True)


@dataclass
class _Stage:
    description: str
    total: float | None
    completed: float
    info: str
    visible: bool
    start: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)


class PlainProgress:
    """rich.Progress's add_task/update, printed as plain lines. A transient stage (a short inner loop) prints only
    when it has run for longer than the interval; any other prints its start and its end too."""

    def __init__(self, transient: bool = False, every: float | None = None):
        self.transient = transient
        self.every = float(os.environ.get("SCORE_PROGRESS_EVERY", 10)) if every is None else every
        self.stages: list[_Stage] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        for stage in self.stages:
            if stage.visible and not self._quiet(stage) and not self._done(stage):
                self._print(stage)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 visible: bool = True, **_) -> int:
        self.stages.append(_Stage(description, total, completed, info, visible))
        if visible and not self.transient:
            self._print(self.stages[-1])
        return len(self.stages) - 1

    def update(self, task: int, advance: float = 0, completed: float | None = None, info: str | None = None,
               **_) -> None:
        stage = self.stages[task]
        stage.completed = completed if completed is not None else stage.completed + advance
        stage.info = stage.info if info is None else info
        due = time.monotonic() - stage.last_print >= self.every
        if stage.visible and not self._quiet(stage) and (due or self._done(stage)):
            self._print(stage)

    def _quiet(self, stage: _Stage) -> bool:
        """A transient stage stays silent until it has run for the interval."""
        return self.transient and self._elapsed(stage) < self.every

    def _done(self, stage: _Stage) -> bool:
        return stage.total is not None and stage.completed >= stage.total

    @staticmethod
    def _elapsed(stage: _Stage) -> float:
        return time.monotonic() - stage.start

    def _print(self, stage: _Stage) -> None:
        count = f"{stage.completed:g}/{stage.total:g}" if stage.total is not None else f"{stage.completed:g}"
        info = f", {stage.info}" if stage.info else ""
        log(f"{stage.description}: {count}, {self._elapsed(stage):.0f} s{info}")
        stage.last_print = time.monotonic()
