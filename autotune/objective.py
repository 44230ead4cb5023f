"""Objectives: turn a Measurement into a score relative to the ORT_ENABLE_ALL baseline, with
accuracy as a hard limit, and decide whether a candidate may be exported at all."""
from __future__ import annotations

import math
from dataclasses import dataclass

from autotune.errors import UsageError
from autotune.measure import Measurement

# pareto: the Optuna strategies search (speedup, peak memory, accuracy drop) together and the
# run keeps their Pareto front; what is exported by default is chosen as for latency.
TARGETS = ("latency", "memory", "pareto")
_EPS = 1e-9  # 0.96 - 0.95 > 0.01 in floating point; a drop equal to the limit is within it


@dataclass(frozen=True)
class Objective:
    target: str = "latency"
    max_accuracy_drop: float = 0.01
    # A win smaller than this is noise-level on a shared machine and not worth shipping.
    min_gain: float = 0.02
    # The baseline is timed beside each candidate, in one process (they share its heap). Some
    # candidates slow it there (seen: sessions without a memory arena made the transformer's
    # baseline beside them up to 55% slower) and then look faster than they are: a speedup
    # whose baseline ran this much slower beside the candidate than alone moments before is
    # not trusted.
    max_disturbance: float = 0.2

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"objective `{self.target}` is not one of {', '.join(TARGETS)}")
        if not 0 <= self.max_accuracy_drop:
            raise UsageError(f"--max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")

    @staticmethod
    def accuracy_drop(m: Measurement, baseline: Measurement) -> float | None:
        """Top-1 points lost (as a fraction) against the baseline, or the fidelity output error."""
        if m.metric == "fidelity":
            return m.output_error
        if m.accuracy is None or baseline.accuracy is None:
            return None
        return baseline.accuracy - m.accuracy

    def score(self, m: Measurement, baseline: Measurement) -> float | None:
        """Higher is better; 1.0 is the baseline. Speedup, or baseline peak memory / peak memory."""
        if not m.ok:
            return None
        if self.target != "memory":
            return m.speedup
        if not m.peak_memory_mb or not baseline.peak_memory_mb:
            return None
        return baseline.peak_memory_mb / m.peak_memory_mb

    def verdict(self, m: Measurement, baseline: Measurement) -> tuple[bool, str]:
        """(exportable, why): within the accuracy limit and a real win over the baseline."""
        if not m.ok:
            return False, f"failed: {m.reason}"
        drop = self.accuracy_drop(m, baseline)
        if drop is None:
            return False, "accuracy not measured"
        what = "output error" if m.metric == "fidelity" else "top-1 drop"
        if drop > self.max_accuracy_drop + _EPS:
            return False, f"{what} {drop:.4f} exceeds the limit {self.max_accuracy_drop}"
        within = f"{what} {drop:.4f} within the limit {self.max_accuracy_drop}"
        alone, beside = m.baseline_alone_ms, m.baseline_ms
        if alone and beside and beside > alone * (1 + self.max_disturbance):
            return False, (f"the baseline ran {beside / alone - 1:.0%} slower beside this "
                           f"candidate than alone: its speedup is not trusted")
        lo, hi = m.speedup_ci
        if self.target != "memory":
            if lo <= 1.0 or m.speedup < 1.0 + self.min_gain:
                return False, f"not faster than the baseline ({m.speedup:.2f}x, 95% CI {lo:.2f}-{hi:.2f})"
            return True, within
        if hi < 1.0:
            return False, f"slower than the baseline ({m.speedup:.2f}x, 95% CI {lo:.2f}-{hi:.2f})"
        ratio = self.score(m, baseline)
        if ratio is None or ratio < 1.0 + self.min_gain:
            return False, "peak memory not lower than the baseline's"
        return True, f"{ratio:.2f}x less peak memory, {within}"

    @property
    def directions(self) -> list[str]:
        """The study's directions: one value, or speedup, memory reduction, accuracy drop."""
        if self.target == "pareto":
            return ["maximize", "maximize", "minimize"]
        return ["maximize"]

    def study_value(self, m: Measurement, baseline: Measurement) -> float | tuple[float, ...] | None:
        """What a study is told about a trial; None: failed (a multi-objective study has no
        number worse than every other for it).

        One value: the log of the score within the accuracy limit, and below zero outside it
        (by how far), so a sampler learns the limit as well as the speed; -2 for a failure.
        Pareto: (speedup, baseline peak memory / peak memory, accuracy drop)."""
        drop = self.accuracy_drop(m, baseline) if m.ok else None
        if self.target == "pareto":
            if drop is None or not m.peak_memory_mb or not baseline.peak_memory_mb:
                return None
            return m.speedup, baseline.peak_memory_mb / m.peak_memory_mb, drop
        score = self.score(m, baseline)
        if not score:
            return -2.0
        over = (drop or 0.0) - self.max_accuracy_drop
        return math.log(score) if over <= _EPS else -1.0 - over

    @property
    def baseline_value(self) -> float | tuple[float, ...]:
        return (1.0, 1.0, 0.0) if self.target == "pareto" else 0.0
