"""Progress for long work: a bar over the measurement budget with the best so far, and one
line per trial. Quiet mode (tests, library use) prints nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from autotune.metrics import label as metric_label

if TYPE_CHECKING:
    from autotune.store import Trial


def trial_line(t: "Trial") -> str:
    m = t.measurement
    head = f"#{t.number:<3} {t.plan.describe()}"
    if not m.ok:
        return f"{head}\n      [red]failed[/red]: {m.reason}"
    acc = (f"error {m.output_error:.4f}" if m.metric == "fidelity" else
           f"{metric_label(m.metric)} {m.accuracy:.4f}") \
        if (m.output_error is not None or m.accuracy is not None) else "accuracy n/a"
    mark = "[green]ok[/green]" if t.exportable else f"[yellow]kept out[/yellow]: {t.verdict}"
    if t.is_baseline:
        mark = "[dim]baseline[/dim]"
    cached = " (cached)" if m.cached else f" {m.seconds:.0f} s"
    if not m.timed:
        verdict = t.verdict.split(";")[0]
        return f"{head}\n      accuracy only: {acc}  ({verdict}){cached}"
    return (f"{head}\n      {m.speedup:.2f}x [{m.speedup_ci[0]:.2f}, {m.speedup_ci[1]:.2f}]  "
            f"{m.latency_ms:.3f} ms vs {m.baseline_ms:.3f} ms  {acc}  peak {m.peak_memory_mb:.1f} MB"
            f"{cached}  {mark}")


class Progress:
    def __init__(self, total: int, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True,
                                 disable=quiet or not self.console.is_terminal)
        self._task = self._bar.add_task("starting", total=max(total, 1))
        self._best = "best: baseline"
        self._evaluations = ""

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def status(self, text: str) -> None:
        self._bar.update(self._task, description=f"{self._best}{self._evaluations} · {text}")

    def trial(self, t: "Trial", best: "Trial | None") -> None:
        if best is not None:
            self.best(f"best: {best.score:.2f}x (#{best.number})")
        self.say(trial_line(t))

    def best(self, text: str) -> None:
        """What the bar says first: the best so far."""
        self._best = text

    def done(self, measurements: int, evaluations: int = 0) -> None:
        """The budget used so far (by every worker of the study): timings, and accuracy
        evaluations (not timed)."""
        self._evaluations = f" · {evaluations} accuracy evaluations" if evaluations else ""
        self._bar.update(self._task, completed=measurements)
