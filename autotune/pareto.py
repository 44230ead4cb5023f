"""The Pareto front of a run over (speedup, peak-memory reduction, accuracy drop), and the picks
that choose one point of it for export: fastest, smallest, most-accurate, or a trial number."""
from __future__ import annotations

from autotune.errors import UsageError
from autotune.objective import Objective
from autotune.store import Trial

PICKS = ("fastest", "smallest", "most-accurate")


def point(t: Trial, baseline: Trial) -> tuple[float, float, float] | None:
    """(speedup, baseline peak memory / peak memory, -accuracy drop): all to be maximized;
    None for a failed trial, one whose accuracy or memory was not measured, and one whose
    speedup is not trusted (its baseline ran much slower beside it than alone, or than when
    the run began: such a point is not what a fresh process measures)."""
    m, b = t.measurement, baseline.measurement
    drop = 0.0 if t.is_baseline else Objective.accuracy_drop(m, b)
    if not m.ok or drop is None or not m.peak_memory_mb or not b.peak_memory_mb:
        return None
    if not t.is_baseline and Objective().untrusted(m, b.latency_ms) is not None:
        return None
    return (1.0 if t.is_baseline else m.speedup), b.peak_memory_mb / m.peak_memory_mb, -drop


def front(trials: list[Trial], baseline: Trial) -> list[Trial]:
    """The trials no other trial beats in every objective (the baseline included), by number."""
    scored = [(t, p) for t in [baseline, *trials] if (p := point(t, baseline)) is not None]

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x >= y for x, y in zip(a, b)) and a != b

    return [t for t, p in scored if not any(dominates(q, p) for _, q in scored)]


def pick(trials: list[Trial], baseline: Trial, which: str, objective: Objective) -> Trial:
    """One trial: a point of the front within the accuracy limit chosen by `which`, or the trial
    with that number. The baseline is the answer when nothing else is within the limit."""
    if which.isdigit():
        number = int(which)
        found = next((t for t in [baseline, *trials] if t.number == number), None)
        if found is None:
            numbers = sorted(t.number for t in [baseline, *trials])
            raise UsageError(f"the run has no trial {number} (its trials: "
                             f"{', '.join(map(str, numbers[:12]))}{', ...' if len(numbers) > 12 else ''})")
        if not found.measurement.ok:
            raise UsageError(f"trial {number} failed ({found.measurement.reason}); pick another")
        return found
    if which not in PICKS:
        raise UsageError(f"--pick takes {', '.join(PICKS)} or a trial number, not `{which}`")
    limit = objective.max_accuracy_drop + 1e-9
    within = [t for t in front(trials, baseline) if -point(t, baseline)[2] <= limit]
    key = {"fastest": lambda p: (p[0], p[2]), "smallest": lambda p: (p[1], p[0]),
           "most-accurate": lambda p: (p[2], p[0])}[which]
    return max(within, key=lambda t: key(point(t, baseline)), default=baseline)
