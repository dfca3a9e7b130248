"""A progress bar per controller, in simulated seconds. Runs in worker processes report through
a manager queue; runs in this process update the bar directly. Silent when disabled."""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, names: list[str], horizon_s: float, enabled: bool = True, cross_process: bool = False) -> None:
        self.enabled = enabled
        self.cross_process = cross_process
        self.horizon_s = max(horizon_s, 1e-9)
        self._names = names
        self._manager: Any = None
        self._queue: Any = None
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self.report: Any = None  # callable((name, sim_now | None)) handed to each run

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        self._progress = Progress(
            TextColumn("{task.description:>12}"), BarColumn(), TextColumn("{task.fields[now]:>8} sim s"),
            TimeElapsedColumn(),
        )
        self._progress.start()
        self._tasks = {n: self._progress.add_task(n, total=self.horizon_s, now="0.0") for n in self._names}
        if self.cross_process:
            self._manager = multiprocessing.Manager()
            self._queue = self._manager.Queue()
            self.report = self._queue.put
        else:
            self.report = self._update
        return self

    def _update(self, item: tuple[str, float | None]) -> None:
        assert self._progress is not None
        name, now = item
        if now is None:
            self._progress.update(self._tasks[name], completed=self.horizon_s)
        else:
            self._progress.update(self._tasks[name], completed=min(now, self.horizon_s), now=f"{now:.1f}")

    def drain(self, timeout_s: float = 0.0) -> None:
        """Apply what worker processes reported (waits up to timeout_s for the first item)."""
        if self._queue is None:
            return
        try:
            item = self._queue.get(timeout=timeout_s) if timeout_s else self._queue.get_nowait()
            while True:
                self._update(item)
                item = self._queue.get_nowait()
        except queue_mod.Empty:
            pass

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.drain()
        if self._progress is not None:
            self._progress.stop()
        if self._manager is not None:
            self._manager.shutdown()
