"""Trials: the records every table, export and report is built from (RUN_DIR/trials.jsonl)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.measure import Measurement
from autotune.plan import Plan


@dataclass(frozen=True)
class Trial:
    number: int  # 0 is the baseline
    plan: Plan
    measurement: Measurement
    strategy: str
    seed: int
    score: float | None = None
    exportable: bool = False
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "plan": self.plan.to_dict(), "plan_digest": self.plan.digest(),
                "plan_summary": self.plan.describe(), "measurement": self.measurement.to_dict(),
                "cached": self.measurement.cached, "strategy": self.strategy, "seed": self.seed,
                "score": self.score, "exportable": self.exportable, "verdict": self.verdict,
                "recorded": time.time()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        return cls(d["number"], Plan.from_dict(d["plan"]), Measurement.from_dict(d["measurement"]),
                   d["strategy"], d["seed"], d.get("score"), d.get("exportable", False),
                   d.get("verdict", ""))


class RunStore:
    """A run directory: run.json (what was asked) and trials.jsonl (one line per trial, appended
    and flushed as each finishes, so a killed run loses at most the trial in flight)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def create(self, run_info: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))

    def append(self, trial: Trial) -> None:
        with open(self.dir / "trials.jsonl", "a") as f:
            f.write(json.dumps(trial.to_dict()) + "\n")

    def trials(self) -> list[Trial]:
        path = self.dir / "trials.jsonl"
        if not path.exists():
            return []
        return [Trial.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line]

    def write_front(self, front: list[Trial], baseline: Trial) -> None:
        """pareto.json: the trials no other beats in speedup, peak memory and accuracy at once."""
        from autotune.pareto import point

        rows = [{"number": t.number, "plan_summary": t.plan.describe(), "speedup": p[0],
                 "memory_reduction": p[1], "accuracy_drop": -p[2]}
                for t in front if (p := point(t, baseline)) is not None]
        tmp = self.dir / "pareto.json.tmp"
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        tmp.replace(self.dir / "pareto.json")

    def run_info(self) -> dict[str, Any]:
        return json.loads((self.dir / "run.json").read_text())
