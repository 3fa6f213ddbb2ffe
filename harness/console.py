"""Terminal output shared by the commands: one rich console for tables, one-line errors on stderr, and
progress with an ETA (a live bar on a terminal, a plain line every few seconds in a log)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

# Piped or captured output has no terminal width; give tables room rather than rich's default 80, and never
# break a message line (a long path stays whole, for grep and copy-paste).
console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())
NAME_WIDTH = 40  # text columns this narrow hold names (backends, metrics): shown whole, never wrapped


def fail(message: str) -> None:
    """One line on stderr: `mars-bench: error: <message>`."""
    click.echo(f"mars-bench: error: {message}", err=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> Table:
    """A rich table whose columns from `numeric_from` on are right-aligned. A name column (left of
    `numeric_from`) of names up to NAME_WIDTH characters is never wrapped or cut: `continuum-dy` stays whole
    however narrow the terminal; longer text (descriptions) wraps."""
    cells = [[fmt(v) for v in row] for row in rows]
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        if i < numeric_from:
            widest = max([len(name), *(len(r[i]) for r in cells if i < len(r))])
            name_like = widest <= NAME_WIDTH
            t.add_column(name, justify="left", no_wrap=name_like, min_width=widest if name_like else None)
        else:
            t.add_column(name, justify="right")
    for row in cells:
        t.add_row(*row)
    return t


def print_table(shown: Table) -> None:
    """Print a table; piped output gets the table's natural width, not cells wrapped to fit 160 columns (rich
    caps a print's width at its console's, so a wider one prints it)."""
    if console.is_terminal:
        console.print(shown)
        return
    natural = Console(width=100_000).measure(shown).maximum  # a measure, too, is capped at its console's width
    Console(width=max(console.width, natural), force_terminal=False).print(shown)


def fmt(value: Any) -> str:
    """Numbers with sensible precision; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "-"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01 or value == 0:
            return f"{value:.3g}" if magnitude < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def plural(count: int, noun: str) -> str:
    """'1 session', '3 sessions'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ------------------------------------------------------------------------------------------- progress
PROGRESS_INTERVAL_ENV = "MARS_BENCH_PROGRESS_INTERVAL"  # seconds between plain progress lines (tests: 0.05)
PROGRESS_INTERVAL_S = 15.0


def progress_interval() -> float:
    """Seconds between plain progress lines: $MARS_BENCH_PROGRESS_INTERVAL if it is a positive number, else 15."""
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, ""))
    except ValueError:
        return PROGRESS_INTERVAL_S
    return value if value > 0 else PROGRESS_INTERVAL_S


def duration(seconds: float) -> str:
    """`42 s`, `3 min`, `1 h 05 min`: a plain line's elapsed time and ETA."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class ProgressReport:
    """Progress of a command's phases with an ETA: a live rich bar on a terminal; when stdout is not one (CI,
    nohup, a pipe), one plain line on stdout every `interval_s` (and at each phase's start and the end), e.g.
    `[sweep] 12/40 runs, 3 min elapsed, ETA 7 min`, in the log beside the tables; stderr keeps to errors and
    warnings. The ETA extrapolates the current phase's rate. `--json` output has none.

        with ProgressReport("sweep", "runs", enabled=not as_json) as progress:
            progress.update("runs", done, total)
    """

    def __init__(self, command: str, unit: str = "", *, enabled: bool = True, interval_s: float | None = None,
                 terminal: bool | None = None, echo: Callable[[str], None] | None = None) -> None:
        self.command, self.unit, self.enabled = command, unit, enabled
        self.interval_s = progress_interval() if interval_s is None else interval_s
        self.terminal = console.is_terminal if terminal is None else terminal
        self.echo = echo or click.echo
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._phase: tuple[str, int, int, float] | None = None  # (name, done, total, phase start)
        self._started = time.monotonic()

    def __enter__(self) -> ProgressReport:
        self._started = time.monotonic()
        if self.enabled and self.terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,  # noqa: PLC0415
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                                  transient=True)
            self._bars.__enter__()
        elif self.enabled:
            self._thread = threading.Thread(target=self._tick, name="progress-lines", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if kind is None and self._phase is not None:
                self.echo(self.line())  # where it ended: the log's last progress line
        if self._bars is not None:
            self._bars.__exit__(kind, error, trace)

    def update(self, phase: str, done: int, total: int, description: str | None = None) -> None:
        """`done` of `total` steps of `phase` are finished (a new phase name starts a new bar or line)."""
        if not self.enabled:
            return
        if self._bars is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._bars.add_task(description or phase, total=total)
            self._bars.update(self._tasks[phase], completed=done, total=total, description=description or phase)
            return
        with self._lock:
            new = self._phase is None or self._phase[0] != phase
            self._phase = (phase, done, total, time.monotonic() if new else self._phase[3])  # type: ignore[index]
        if new:
            self.echo(self.line())

    def line(self) -> str:
        """The plain progress line for now: `[compare] 3/10 runs, 42 s elapsed, ETA 1 min`, or with the phase
        named when it is not the unit: `[run] simulating: 5/8 sessions, 12 s elapsed, ETA 8 s`."""
        with self._lock:
            if self._phase is None:
                return f"[{self.command}] starting"
            phase, done, total, since = self._phase
        now = time.monotonic()
        named = "" if phase == self.unit else f"{phase}: "
        unit = f" {self.unit}" if self.unit else ""
        text = f"[{self.command}] {named}{done}/{total}{unit}, {duration(now - self._started)} elapsed"
        if done >= total:
            return text + ", done"
        if done > 0:
            return text + f", ETA {duration((now - since) / done * (total - done))}"
        return text + ", ETA unknown"

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._phase is not None:
                self.echo(self.line())
