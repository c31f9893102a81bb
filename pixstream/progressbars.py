"""What `pixstream submit` shows while a batch runs: an overall bar, a live bar per job in
flight (its steps, from the job's event stream), a line per file as it is created and as it
ends, and a summary table. On a pipe rich draws no bars, and the lines remain."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from pixstream.batch import Outcome
from pixstream.events import JOB_REQUESTED, STEP_COMPLETED, STEP_FAILED, TASK_STARTED, CloudEvent

STYLE = {"completed": "green", "failed": "red", "error": "red", "submitted": "cyan"}


class Bars:
    """A `batch.Reporter` drawing with rich."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        )
        self.overall = self.progress.add_task("all files", total=total)
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def created(self, outcome: Outcome) -> None:
        self.console.print(f"{escape(outcome.file)}: job {outcome.job_id}", highlight=False)
        self._bars[outcome.file] = self.progress.add_task(
            escape(outcome.file), total=None, start=True
        )

    def event(self, outcome: Outcome, event: CloudEvent) -> None:
        bar = self._bars.get(outcome.file)
        if bar is None:
            return
        if event.type == JOB_REQUESTED:
            self.progress.update(bar, total=len(event.data.get("steps", [])))
        elif event.type == TASK_STARTED:
            self.progress.update(bar, description=f"{escape(outcome.file)} (processing)")
        elif event.type in (STEP_COMPLETED, STEP_FAILED):
            self.progress.advance(bar)

    def finished(self, outcome: Outcome) -> None:
        bar = self._bars.pop(outcome.file, None)
        if bar is not None:
            self.progress.remove_task(bar)
        self.progress.advance(self.overall)
        style = STYLE.get(outcome.status, "")
        line = f"{escape(outcome.file)}: [{style}]{outcome.status}[/]"
        if outcome.errors:
            line += ": " + escape("; ".join(outcome.errors))
        self.console.print(line, highlight=False)


class Quiet:
    """A `batch.Reporter` that shows nothing (`--json`)."""

    def created(self, outcome: Outcome) -> None: ...
    def event(self, outcome: Outcome, event: CloudEvent) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


def summary(outcomes: Sequence[Outcome]) -> Table:
    """One row per file: its job, how it ended, where its outputs are or what went wrong."""
    table = Table(title="pixstream submit", title_justify="left")
    for column in ("file", "job", "status", "outputs / errors"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        detail = "\n".join(o.errors + o.outputs)
        style = STYLE.get(o.status, "")
        table.add_row(escape(o.file), o.job_id or "-", f"[{style}]{o.status}[/]", escape(detail))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    table.caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return table
