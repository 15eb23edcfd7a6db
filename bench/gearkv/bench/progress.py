"""The benches' progress display on stderr, shared by `gearkv bench store`, `resume` and `codec`."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

__all__ = ["progress"]


@contextlib.contextmanager
def progress(total: int, first: str = "starting") -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr (gone when done); yields ``tick(what)``, to call after each step.

    ``first`` describes the work before the first tick. When stderr is not a terminal (CI logs, ``2> file``)
    there is no bar, and each tick writes one plain line instead: ``[done/total] what (elapsed)``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal or console.is_dumb_terminal:
        started, done = time.perf_counter(), 0

        def line(what: str) -> None:
            nonlocal done
            done += 1
            elapsed = time.perf_counter() - started
            print(f"[{done}/{total}] {what} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

        yield line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(first, total=total)
        yield lambda what: bar.update(task, advance=1, description=what)
