"""Rich progress bars for long steps that are not coffea's (conversion, training)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def byte_progress(
    description: str, enabled: bool = True
) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a ``callback(done_bytes, total_bytes)`` driving a bar, or None when disabled."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def step_progress(
    description: str, total: int, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)`` for a bar over ``total`` steps (epochs, chunks...)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            bar.update(task, advance=n, info=info)

        yield advance
