"""The tuning loop: measure the baseline, let a strategy propose Plans within a budget of real
measurements, record every trial, and export the best exportable one (or the baseline)."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autotune import export, pareto, strategies
from autotune.errors import ModelError, UsageError
from autotune.measure import Cache, Measurer, Protocol, machine
from autotune.objective import Objective
from autotune.paths import cache_dir
from autotune.plan import Plan
from autotune.progress import Progress
from autotune.space import SearchSpace
from autotune.store import RunStore, Trial
from autotune.workload import Workload


@dataclass
class TuneResult:
    run_dir: Path
    baseline: Trial
    trials: list[Trial]
    best: Trial | None  # None: the baseline configuration is the answer
    measurements_used: int


def default_cache() -> Cache:
    return Cache(cache_dir() / "measurements.sqlite")


def sites_of(workload: Workload) -> list:
    import onnx

    from autotune.sites import catalogue

    return catalogue(onnx.load(str(workload.model_path)), workload.shapes)


def pick_best(trials: list[Trial], objective: Objective) -> Trial | None:
    """The highest-scoring exportable trial, or None."""
    candidates = [t for t in trials if t.exportable and t.number > 0]
    return max(candidates, key=lambda t: t.score, default=None)


def tune(workload: Workload, space: SearchSpace, *, strategy: str = "random", budget: int = 12,
         objective: Objective = Objective(), seed: int = 0, out: Path,
         protocol: Protocol = Protocol(), cache: Cache | None = None,
         command: list[str] | None = None, quiet: bool = False,
         measurer: Measurer | None = None) -> TuneResult:
    """Tunes `workload` over `space`. `budget` counts real measurements beyond the baseline:
    cache hits are free, failed candidates count. `measurer` replaces the real one (tests)."""
    out = Path(out)
    if budget < 0:
        raise UsageError(f"--budget must be >= 0, got {budget}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already exists and is not empty; choose a new --out directory "
                         f"or remove it")
    if space.needs_sites:
        space = space.bind(sites_of(workload))
    searcher = strategies.make(strategy, space, seed)
    measurer = measurer or Measurer(workload, protocol, cache)
    progress = Progress(budget, quiet=quiet)
    for note in workload.notes:
        progress.say(f"[dim]{note}[/dim]")

    with progress:
        progress.status("measuring the ORT_ENABLE_ALL baseline")
        base_m = measurer.measure(Plan())
        if not base_m.ok and base_m.transient:
            raise ModelError(f"measuring the baseline (the model as given, ORT_ENABLE_ALL) failed: "
                             f"{base_m.reason}; try again, or raise --timeout")
        if not base_m.ok:
            raise ModelError(f"the model does not run on ONNX Runtime as given ({base_m.reason}); "
                             f"check its operators and opset, and the input shapes bound")
        baseline = Trial(0, Plan(), base_m, "baseline", seed, 1.0, False, "the baseline")
        searcher.setup(base_m, objective)
        # Only now is RUN_DIR written: bad input above leaves nothing behind.
        store = RunStore(out)
        store.create(_run_info(workload, space, searcher, budget, objective, seed, protocol, command))
        store.append(baseline)
        progress.trial(baseline, None)

        trials: list[Trial] = []
        used = 0
        best: Trial | None = None
        while used < budget:
            plan = searcher.ask()
            if plan is None:
                progress.say("the strategy has nothing new to propose: the space is exhausted")
                break
            progress.status(f"measuring {plan.describe()}")
            m = measurer.measure(plan)
            used += 0 if m.cached else 1
            exportable, why = objective.verdict(m, base_m)
            trial = Trial(len(trials) + 1, plan, m, strategy, seed,
                          objective.score(m, base_m), exportable, why)
            trials.append(trial)
            store.append(trial)
            searcher.tell(plan, m, trial.score)
            best = pick_best(trials, objective)
            store.write_front(pareto.front(trials, baseline), baseline)
            progress.trial(trial, best, advance=not m.cached)

        progress.status("exporting the tuned model")
        export.write(out / "best", workload, measurer, baseline, best, objective)
    return TuneResult(out, baseline, trials, best, used)


def _run_info(workload: Workload, space: SearchSpace, searcher: strategies.Strategy, budget: int,
              objective: Objective, seed: int, protocol: Protocol,
              command: list[str] | None) -> dict[str, Any]:
    import onnxruntime

    return {"command": command or sys.argv, "workload": workload.spec(),
            "workload_digest": workload.digest(), "search_space": space.name,
            "site_choices": len(space.site_choices),
            "strategy": searcher.settings(), "budget": budget, "objective": asdict(objective),
            "seed": seed, "protocol": asdict(protocol), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "machine": machine()}


__all__ = ["tune", "TuneResult", "pick_best", "default_cache"]
