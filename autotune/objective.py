"""Objectives: turn a Measurement into a score relative to the ORT_ENABLE_ALL baseline, with
accuracy as a hard limit, and decide whether a candidate may be exported at all."""
from __future__ import annotations

import math
from dataclasses import dataclass

from autotune.errors import UsageError, did_you_mean
from autotune.measure import Measurement
from autotune.metrics import drop_name

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
        """How much worse the metric's score is than the baseline's on the same data (top-1:
        points lost, as a fraction), or, for fidelity, the output error."""
        if m.metric == "fidelity":
            return m.output_error
        if m.accuracy is None or baseline.accuracy is None:
            return None
        drop = baseline.accuracy - m.accuracy
        return drop if m.higher_is_better else -drop

    def within_limit(self, drop: float) -> bool:
        """Is an accuracy drop (see `accuracy_drop`) within the limit? Equal to it is."""
        return drop <= self.max_accuracy_drop + _EPS

    def score(self, m: Measurement, baseline: Measurement) -> float | None:
        """Higher is better; 1.0 is the baseline. Speedup, or baseline peak memory / peak memory.
        None for a failure and for an accuracy evaluation (not timed)."""
        if not m.ok or not m.timed:
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
        what = drop_name(m.metric)
        if not self.within_limit(drop):
            return False, f"{what} {drop:.4f} exceeds the limit {self.max_accuracy_drop}"
        within = f"{what} {drop:.4f} within the limit {self.max_accuracy_drop}"
        if not m.timed:
            return False, f"{within}; accuracy evaluation only, not timed"
        if (why := self.untrusted(m)) is not None:
            return False, why
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

    def untrusted(self, m: Measurement, usual_ms: float | None = None) -> str | None:
        """Why m's speedup is not to be trusted, or None: its baseline ran more than
        `max_disturbance` slower beside it than alone, or (given `usual_ms`, the baseline's
        latency when the run began) than usual, or the candidate ran that much slower beside
        the baseline than alone (a provider's own threads and ORT's can contend). The second is a busy machine: another process
        on one of the cores slows a two-thread baseline more than a one-thread candidate."""
        alone, beside = m.baseline_alone_ms, m.baseline_ms
        if alone and beside and beside > alone * (1 + self.max_disturbance):
            return (f"the baseline ran {beside / alone - 1:.0%} slower beside this candidate "
                    f"than alone: its speedup is not trusted")
        if usual_ms and beside and beside > usual_ms * (1 + self.max_disturbance):
            return (f"the baseline ran {beside / usual_ms - 1:.0%} slower beside this candidate "
                    f"than when the run began: its speedup is not trusted")
        alone, beside = m.latency_alone_ms, m.latency_ms  # and the other way round
        if alone and beside and beside > alone * (1 + self.max_disturbance):
            return (f"this candidate ran {beside / alone - 1:.0%} slower beside the baseline "
                    f"than alone: its speedup is not trusted")
        return None

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
        Pareto: (speedup, baseline peak memory / peak memory, accuracy drop).

        An accuracy evaluation (not timed) over the limit is told what its timing would be told
        wherever it ran; within the limit its speed is unknown: None."""
        drop = self.accuracy_drop(m, baseline) if m.ok else None
        if m.ok and not m.timed:
            if self.target == "pareto" or drop is None or drop - self.max_accuracy_drop <= _EPS:
                return None
            return -1.0 - (drop - self.max_accuracy_drop)
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


class Reward:
    """What an RL agent is paid for one measured Plan, relative to the ORT_ENABLE_ALL baseline:
    above zero means it beats the baseline. `reset(baseline)` once per baseline, then
    `update(measurement)` per episode.

    Accuracy is a constraint: a candidate over the limit is paid at most 0, less in proportion
    to how far it is over (`penalty` per limit's worth of excess, down to FAILED); a failed one
    is paid FAILED."""

    name = ""
    FAILED = -2.0

    def __init__(self, max_accuracy_drop: float = 0.01, penalty: float = 0.5) -> None:
        if max_accuracy_drop < 0:
            raise UsageError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
        self.max_accuracy_drop, self.penalty = max_accuracy_drop, penalty
        self.baseline: Measurement | None = None

    def reset(self, baseline: Measurement) -> None:
        if not baseline.ok:
            raise UsageError(f"the baseline failed ({baseline.reason}): nothing to reward against")
        self.baseline = baseline

    def update(self, m: Measurement) -> float:
        if self.baseline is None:
            raise UsageError("Reward.update before reset(baseline)")
        value = self.value(m) if m.ok else None
        if value is None:
            return self.FAILED
        over = (Objective.accuracy_drop(m, self.baseline) or 0.0) - self.max_accuracy_drop
        return self.constrain(value, over / max(self.max_accuracy_drop, 1e-3) if over > _EPS else 0.0)

    def constrain(self, value: float, excess: float) -> float:
        """The reward of a candidate worth `value` whose accuracy is `excess` limits' worth over
        the limit (0: within it)."""
        return value if excess == 0 else max(self.FAILED, min(value, 0.0) - self.penalty * excess)

    def value(self, m: Measurement) -> float | None:
        """The unconstrained reward of a measured candidate; None if it cannot be computed."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} (accuracy limit {self.max_accuracy_drop})"


class LogSpeedup(Reward):
    """log(baseline median latency / candidate median latency)."""

    name = "log_speedup"

    def value(self, m: Measurement) -> float | None:
        return math.log(m.speedup) if m.speedup else None


class MemoryReduction(Reward):
    """log(baseline peak memory / candidate peak memory)."""

    name = "memory"

    def value(self, m: Measurement) -> float | None:
        b = self.baseline.peak_memory_mb
        return math.log(b / m.peak_memory_mb) if b and m.peak_memory_mb else None


class Weighted(Reward):
    """A weighted sum of other rewards' values, e.g. 0.7 latency + 0.3 memory."""

    def __init__(self, weights: dict[str, float], max_accuracy_drop: float = 0.01,
                 penalty: float = 0.5) -> None:
        super().__init__(max_accuracy_drop, penalty)
        unknown = set(weights) - set(REWARDS) - {"weighted"}
        if unknown or "weighted" in weights:
            raise UsageError(f"weighted rewards combine {', '.join(REWARDS)}, not "
                             f"{', '.join(sorted(set(weights) - set(REWARDS)))}")
        self.parts = {REWARDS[k](max_accuracy_drop, penalty): w for k, w in weights.items()}
        self.name = "weighted:" + ",".join(f"{k}={w:g}" for k, w in weights.items())

    def reset(self, baseline: Measurement) -> None:
        super().reset(baseline)
        for part in self.parts:
            part.reset(baseline)

    def value(self, m: Measurement) -> float | None:
        values = [(part.value(m), w) for part, w in self.parts.items()]
        if any(v is None for v, _ in values):
            return None
        return sum(v * w for v, w in values)


REWARDS: dict[str, type[Reward]] = {"log_speedup": LogSpeedup, "memory": MemoryReduction}


class Lagrangian(Reward):
    """A reward to train on, wrapping another: its value minus `weight` x log(1 + the excess
    over the accuracy limit, in limits' worth), neither capped at 0 the way `Reward` caps it
    nor floored at FAILED, so that a plan over the limit still tells which of its choices
    bought speed and which cost accuracy. The log keeps that signal when a plan is hundreds
    of limits over (a linear penalty, floored, made all of them alike). `agents.train` raises
    `weight` while it trains: the policy learns where the speed is, then what the limit
    allows. Trained under the hard reward, or a linear floored penalty, policies met the
    limit by keeping every site in FP32 (a random plan is nearly always over a tight limit)."""

    def __init__(self, base: Reward, weight: float = 1.0) -> None:
        super().__init__(base.max_accuracy_drop, base.penalty)
        self.base, self.weight = base, weight
        self.name = f"lagrangian:{base.name}"

    def reset(self, baseline: Measurement) -> None:
        super().reset(baseline)
        self.base.reset(baseline)

    def value(self, m: Measurement) -> float | None:
        return self.base.value(m)

    def constrain(self, value: float, excess: float) -> float:
        return value - self.weight * math.log1p(excess)


def make_reward(spec: "str | Reward", max_accuracy_drop: float = 0.01) -> Reward:
    """A Reward from its name: log_speedup, memory, or weighted:log_speedup=0.7,memory=0.3."""
    if isinstance(spec, Reward):
        return spec
    if spec.startswith("weighted:"):
        try:
            weights = {k.strip(): float(v) for k, v in
                       (part.split("=") for part in spec[len("weighted:"):].split(","))}
        except ValueError:
            raise UsageError(f"reward `{spec}`: write weighted:log_speedup=0.7,memory=0.3") from None
        return Weighted(weights, max_accuracy_drop)
    if spec not in REWARDS:
        raise UsageError(f"no reward `{spec}`.{did_you_mean(spec, REWARDS)} Known: "
                         f"{', '.join(REWARDS)}, weighted:NAME=W,...")
    return REWARDS[spec](max_accuracy_drop)
