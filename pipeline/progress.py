"""Progress display: a bar per clip showing its current stage (rich, on a terminal), or one plain line per
finished stage otherwise (logs of nightly jobs). Thread-safe; clips may run in parallel."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.live = mode == "on" or (mode == "auto" and self.stream.isatty())
        self.quiet = mode == "off"
        self._lock = threading.Lock()
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.fields[clip]:<28.28}"),
                TextColumn("{task.fields[stage]:<11}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def stage(self, clip: str, stage: str, total: int | None = None) -> Callable[[int, int], None]:
        """Mark ``clip`` as in ``stage``; returns a callback ``(done, total)`` for work inside the stage."""
        if self._bar is None:
            return lambda done, tot: None
        with self._lock:
            if clip not in self._tasks:
                self._tasks[clip] = self._bar.add_task("", clip=clip, stage=stage, total=total)
            task = self._tasks[clip]
            self._bar.update(task, stage=stage, completed=0, total=total)

        def update(done: int, tot: int) -> None:
            self._bar.update(task, completed=done, total=tot)

        return update

    def stage_done(self, clip: str, stage: str, status: str, seconds: float, reason: str | None) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            with self._lock:
                task = self._tasks.get(clip)
                if task is not None:
                    self._bar.update(task, stage=f"{stage}:{status}")
            return
        if status in ("computed", "failed"):
            extra = f" ({reason})" if reason and status == "failed" else ""
            with self._lock:
                print(f"{clip}: {stage} {status} in {seconds:.1f}s{extra}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """One line of news that is not a stage result (e.g. waiting for another run's lock)."""
        if self.quiet:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(text)
            else:
                print(text, file=self.stream, flush=True)

    def clip_done(self, clip: str, status: str) -> None:
        if self._bar is not None:
            with self._lock:
                task = self._tasks.get(clip)
                if task is not None:
                    self._bar.update(task, stage=status, completed=1, total=1)
