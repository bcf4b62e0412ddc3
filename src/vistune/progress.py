"""The one progress bar used by long jobs (training stages, backbone pretraining): a rich bar with a free-text
info column, or nothing at all when disabled (non-zero ranks, ``--no-progress``, tests)."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """``with ProgressBar(enabled, label, total) as bar: bar.update(done, info)``; a no-op when disabled."""

    def __init__(self, enabled: bool, label: str, total: int, start: int = 0) -> None:
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._task = self._p.add_task(label, total=total, completed=start, info="")

    def __enter__(self) -> ProgressBar:
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def update(self, done: int, info: str = "") -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done, info=info)
