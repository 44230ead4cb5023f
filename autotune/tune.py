"""The tuning loop: measure the baseline, let a strategy propose Plans within a budget of real
measurements, record every trial, and export the best exportable one (or the baseline)."""
from __future__ import annotations

import hashlib
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autotune import export, pareto, providers, strategies
from autotune import space as spaces
from autotune.errors import ModelError, UsageError
from autotune.measure import ACCURACY_BUDGET, Cache, Measurement, Measurer, Protocol, machine
from autotune.objective import Objective
from autotune.paths import cache_dir
from autotune.plan import Plan
from autotune.progress import Progress
from autotune.space import SearchSpace
from autotune.store import Ledger, RunStore, Trial, mask, worker_id
from autotune.workload import Workload


@dataclass
class TuneResult:
    run_dir: Path
    baseline: Trial
    trials: list[Trial]
    best: Trial | None  # None: the baseline configuration is the answer
    measurements_used: int  # timings
    accuracy_evaluations: int = 0  # accuracy evaluations (not timed), cache hits aside


def default_cache() -> Cache:
    return Cache(cache_dir() / "measurements.sqlite")


def sites_of(workload: Workload) -> list:
    import onnx

    from autotune.sites import catalogue

    return catalogue(onnx.load(str(workload.model_path)), workload.shapes)


def pick_best(trials: list[Trial], objective: Objective) -> Trial | None:
    """The highest-scoring exportable trial, or None."""
    candidates = [t for t in trials if t.exportable and not t.is_baseline]
    return max(candidates, key=lambda t: t.score, default=None)


def tune(workload: Workload, space: SearchSpace, *, strategy: str = "random", budget: int = 12,
         accuracy_budget: int = ACCURACY_BUDGET,
         objective: Objective = Objective(), seed: int = 0, out: Path,
         protocol: Protocol = Protocol(), cache: Cache | None = None,
         command: list[str] | None = None, quiet: bool = False,
         measurer: Measurer | None = None, storage: str | None = None,
         study: str | None = None, heartbeat_seconds: int = 10,
         policy: Path | None = None, progress: Progress | None = None) -> TuneResult:
    """Tunes `workload` over `space`. `budget` counts real measurements (timings) beyond the
    baseline: cache hits are free, failed candidates count; `accuracy_budget` counts accuracy
    evaluations, which strategies that screen plans by accuracy ask for. The trials go into an Optuna study: SQLite at
    RUN_DIR/study.db, or the database at `storage`, where `autotune worker` processes on other
    machines can join it (`join`). `measurer` replaces the real one (tests); `progress` shows
    the run in a display of the caller's (an experiment's)."""
    out = Path(out)
    if budget < 0:
        raise UsageError(f"--budget must be >= 0, got {budget}")
    if accuracy_budget < 0:
        raise UsageError(f"--accuracy-budget must be >= 0, got {accuracy_budget}")
    if heartbeat_seconds < 1:
        raise UsageError(f"--heartbeat must be at least 1 second, got {heartbeat_seconds}")
    if workload.metric.name == "top1" and objective.max_accuracy_drop > 1:
        raise UsageError(f"--max-accuracy-drop {objective.max_accuracy_drop} is more than the "
                         f"whole top-1 scale: it is a fraction (0.01 = one point)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the run")
    strategies.make(strategy, space, seed, workload, policy)  # bad names fail before measuring
    if out.exists() and any(out.iterdir()):
        if not stopped(out) or storage:
            raise UsageError(f"{out} already exists and is not empty; choose a new --out "
                             f"directory or remove it")
        asked = {"workload": workload.digest(), "search space": spaces.to_spec(space),
                 "strategy": strategy, "budget": budget, "accuracy_budget": accuracy_budget,
                 "objective": asdict(objective),
                 "seed": seed, "protocol": asdict(protocol)}
        stopped_run = RunStore(out)
        if (why := _differs(stopped_run.run_info(), asked)) is not None:
            raise UsageError(f"{out} holds a stopped run whose {why}; run its own command again "
                             f"to resume it (see {out / 'run.json'}), or choose a new --out")
        progress = progress or Progress(budget, quiet=quiet)
        kept = sum(1 for t in stopped_run.trials() if not t.is_baseline)
        progress.say(f"resuming the stopped run in {out}: {kept} finished trial(s) kept")
        return resume(out, cache=cache, quiet=quiet, measurer=measurer, progress=progress)
    study = study or (out.name if storage else "autotune")
    if storage:
        Ledger.check_new(storage, study)
    if space.needs_sites:
        space = space.bind(sites_of(workload))
    measurer = measurer or Measurer(workload, protocol, cache)
    progress = progress or Progress(budget, quiet=quiet)
    for note in (*workload.notes, *space.notes):
        progress.say(f"[dim]{note}[/dim]")

    with progress:
        base_m = _measure_baseline(measurer, progress)
        searcher = strategies.make(strategy, space, seed, workload, policy)
        info = _run_info(workload, space, searcher, budget, accuracy_budget, objective, seed,
                         protocol, command)
        # Only now is anything written: bad input above leaves nothing behind.
        store = RunStore(out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            ledger = Ledger.create(store.storage_url(storage), study, info, objective.directions,
                                   heartbeat_seconds)
        except BaseException:
            shutil.rmtree(out)  # it was empty, or did not exist
            raise
        store.create({**info, "storage": storage, "study": study})
        if storage:
            progress.say(f"study `{study}` in {mask(storage)}; more workers, one per machine: "
                         f"autotune worker --storage URL --study {study}")
        baseline = _work(ledger, searcher, measurer, base_m, objective, budget, seed, progress,
                         store, accuracy_budget=accuracy_budget)
        return _export_best(out, ledger, workload, measurer, baseline, objective, progress)


def join(storage: str, study: str, *, cache: Cache | None = None, quiet: bool = False,
         measurer: Measurer | None = None) -> list[Trial]:
    """Works on a study made by `tune` until its budget is used: the workload, space, strategy,
    objective and protocol come from the study, the measurements from this machine. Returns
    the trials this worker measured (its baseline not among them)."""
    ledger = Ledger.open(storage, study)
    info = ledger.info
    w, space, objective, protocol = _context(info)
    # Workers must not propose alike: each draws from its own seed, recorded in its trials.
    seed = int(hashlib.sha256(f"{info['seed']}:{worker_id()}".encode()).hexdigest()[:7], 16)
    measurer = measurer or Measurer(w, protocol, cache)
    progress = Progress(info["budget"], quiet=quiet)
    with progress:
        base_m = _measure_baseline(measurer, progress)
        searcher = strategies.make(info["strategy"]["name"], space, seed, w,
                                   info["strategy"].get("policy"))
        _work(ledger, searcher, measurer, base_m, objective, info["budget"], seed, progress,
              accuracy_budget=info.get("accuracy_budget", 0))
    return ledger.trials(worker=worker_id())


def stopped(out: Path) -> bool:
    """Whether RUN_DIR holds a run of its own that stopped before its export."""
    store = RunStore(out)
    return store.exists() and not store.finished() and not store.run_info().get("storage")


def _differs(info: dict[str, Any], asked: dict[str, Any]) -> str | None:
    """Which argument of a new command differs from the stopped run's, or None."""
    import json

    had = {"workload": info["workload_digest"], "search space": info["search_space_spec"],
           "strategy": info["strategy"]["name"], "budget": info["budget"],
           "accuracy_budget": info.get("accuracy_budget", 0), "objective": info["objective"], "seed": info["seed"], "protocol": info["protocol"]}
    for key, value in asked.items():
        if json.dumps(value, sort_keys=True, default=str) != json.dumps(had[key], sort_keys=True,
                                                                       default=str):
            if key in ("budget", "accuracy_budget", "seed", "strategy"):
                return f"{key} is {had[key]}, not {value}"
            return f"{key} differs"
    return None


def resume(out: Path, *, cache: Cache | None = None, quiet: bool = False,
           measurer: Measurer | None = None, progress: Progress | None = None) -> TuneResult:
    """Finishes a run in RUN_DIR that was stopped (killed, interrupted) before its export. The
    trial that was being measured is set aside (its plan may be measured again), every finished
    trial stays, and the strategy goes on from the run's seed until the budget is used: a
    seeded strategy proposes its earlier plans again, and those are answered from the ledger,
    free. Only for a run's own study (SQLite in RUN_DIR): shared studies have workers."""
    out = Path(out)
    store = RunStore(out)
    if not store.exists():
        raise UsageError(f"{out} holds no run to resume (no run.json); start it with "
                         f"`autotune tune`")
    if store.run_info().get("storage"):
        raise UsageError(f"{out}'s study is shared ({mask(store.run_info()['storage'])}): "
                         f"finish it with `autotune worker`")
    ledger = store.ledger()
    info = ledger.info
    w, space, objective, protocol = _context(info)
    ledger.set_aside_in_flight("the run stopped during this measurement; measured again when "
                               "proposed again")
    measurer = measurer or Measurer(w, protocol, cache)
    progress = progress or Progress(info["budget"], quiet=quiet)
    with progress:
        base_m = _measure_baseline(measurer, progress)
        searcher = strategies.make(info["strategy"]["name"], space, info["seed"], w,
                                   info["strategy"].get("policy"))
        baseline = _work(ledger, searcher, measurer, base_m, objective, info["budget"],
                         info["seed"], progress, store, resuming=True,
                         accuracy_budget=info.get("accuracy_budget", 0))
        shutil.rmtree(out / "best", ignore_errors=True)  # an export the stop cut short
        return _export_best(out, ledger, w, measurer, baseline, objective, progress)


def _export_best(out: Path, ledger: Ledger, workload: Workload, measurer: Measurer,
                 baseline: Trial, objective: Objective, progress: Progress) -> TuneResult:
    """RUN_DIR/best/: the best exportable trial of the study, or the baseline configuration."""
    trials = [t for t in ledger.trials() if not t.is_baseline]
    best = pick_best(trials, objective)
    progress.status("exporting the tuned model")
    export.write(out / "best", workload, measurer, baseline, best, objective)
    used = sum(not t.measurement.cached and t.measurement.timed for t in trials)
    evaluated = sum(not t.measurement.cached and not t.measurement.timed for t in trials)
    return TuneResult(out, baseline, trials, best, used, evaluated)


def _context(info: dict[str, Any]) -> tuple[Workload, SearchSpace, Objective, Protocol]:
    """The workload, bound space, objective and protocol a study's run info describes."""
    from autotune import workload as workloads

    w = workloads.from_spec(info["workload"], info["workload_digest"])
    space = spaces.parse(info["search_space_spec"])
    if space.needs_sites:
        space = space.bind(sites_of(w))
    return w, space, Objective(**info["objective"]), Protocol(**info["protocol"])


def _measure_baseline(measurer: Measurer, progress: Progress):
    if isinstance(measurer, Measurer):  # a stand-in (tests, surrogates) has no metric to check
        progress.status("scoring the unmodified model with the workload's metric")
        measurer.check_metric()
    progress.status("measuring the ORT_ENABLE_ALL baseline")
    base_m = measurer.measure(Plan())
    if not base_m.ok and base_m.transient:
        raise ModelError(f"measuring the baseline (the model as given, ORT_ENABLE_ALL) failed: "
                         f"{base_m.reason}; try again, or raise --timeout")
    if not base_m.ok:
        raise ModelError(f"the model does not run on ONNX Runtime as given ({base_m.reason}); "
                         f"check its operators and opset, and the input shapes bound")
    return base_m


def _work(ledger: Ledger, searcher: strategies.Strategy, measurer: Measurer, base_m,
          objective: Objective, budget: int, seed: int, progress: Progress,
          store: RunStore | None = None, resuming: bool = False,
          accuracy_budget: int = 0) -> Trial:
    """The loop every worker runs: propose, claim, measure (or evaluate accuracy alone, when
    the strategy asks), record, until the study's budget is used or the strategy has nothing
    new; then wait for other workers' trials in flight. Returns this machine's baseline trial
    (`resuming`: the one recorded before, if any)."""
    host = platform.node()
    me = worker_id()
    name = searcher.name
    earlier = [t for t in ledger.trials() if t.is_baseline and t.host == host] if resuming else []
    baseline = earlier[0] if earlier else ledger.add_baseline(
        Trial(0, Plan(), base_m, "baseline", seed, 1.0, False, "the baseline", host),
        objective.baseline_value, *(searcher.baseline_params() or ()))
    searcher.setup(base_m, objective, ledger, accuracy_budget)
    progress.trial(baseline, None)
    attrs = {"strategy": name, "seed": seed, "host": host}
    warned = False
    best: Trial | None = None
    while True:
        ledger.fail_stale()
        spent = ledger.spent()
        progress.done(spent, ledger.spent(timed=False))
        if spent >= budget:
            break
        plan = searcher.ask()
        if plan is None:
            progress.say(f"{name} has nothing new to propose (its plans, or the space, are "
                         f"exhausted)")
            break
        timed = not searcher.accuracy_only
        otrial = searcher.open_trial()
        verdict, other = ledger.claim(otrial, plan, budget if timed else accuracy_budget, attrs,
                                      timed)
        if verdict == "over":
            why = ("the budget was used by other workers" if timed else
                   f"the accuracy budget ({accuracy_budget}) is used")
            ledger.skip(otrial, why)
            searcher.tell(plan, Measurement.failed(f"not measured: {why}", transient=True,
                                                   timed=timed), None)
            continue
        if verdict == "repeat":
            done = ledger.trial(other)  # None while in flight
            ledger.skip(otrial, f"repeats trial {other.number}",
                        other.values if done is not None and other.values else None)
            searcher.tell(plan, done.measurement if done else
                          Measurement.failed(f"being measured as trial {other.number}",
                                             transient=True), done.score if done else None)
            continue
        if not warned and (near := [t for t in ledger.in_flight(exclude=me)
                                    if t.user_attrs.get("host") == host]):
            progress.say(f"[yellow]warning[/yellow]: another worker "
                         f"({near[0].user_attrs.get('worker')}) is measuring on this machine: two "
                         f"timing jobs at once spoil each other's latencies; run one worker per "
                         f"machine")
            warned = True
        progress.status(f"{'measuring' if timed else 'evaluating the accuracy of'} "
                        f"{plan.describe()}")
        try:
            with ledger.heartbeat(otrial):
                m = measurer.measure(plan) if timed else measurer.evaluate(plan)
        except BaseException:  # not the candidate's failure: its plan may be measured again
            ledger.skip(otrial, "interrupted during the measurement")
            raise
        exportable, why = objective.verdict(m, base_m)
        trial = Trial(otrial.number, plan, m, name, seed, objective.score(m, base_m), exportable,
                      why, host)
        ledger.record(otrial, trial, objective.study_value(m, base_m) if m.ok else
                      (None if objective.target == "pareto" else -2.0))
        searcher.tell(plan, m, trial.score)
        everything = ledger.trials()
        best = pick_best(everything, objective)
        if store is not None:
            store.write_front(pareto.front([t for t in everything if not t.is_baseline],
                                           baseline), baseline)
        progress.trial(trial, best)
    searcher.close()
    _wait_for_others(ledger, me, progress)
    if store is not None:
        everything = ledger.trials()
        store.write_front(pareto.front([t for t in everything if not t.is_baseline], baseline),
                          baseline)
    return baseline


def _wait_for_others(ledger: Ledger, me: str, progress: Progress) -> None:
    """Waits until no other worker's trial is in flight: each ends measured, or failed once its
    worker stops beating (so that a killed worker's trial is marked failed, not left open)."""
    while running := ledger.in_flight(exclude=me):
        progress.status(f"waiting for {len(running)} trial(s) of other workers")
        time.sleep(min(2.0, ledger.heartbeat_seconds / 2))
        ledger.fail_stale()


def _run_info(workload: Workload, space: SearchSpace, searcher: strategies.Strategy, budget: int,
              accuracy_budget: int, objective: Objective, seed: int, protocol: Protocol,
              command: list[str] | None) -> dict[str, Any]:
    import onnxruntime

    return {"command": command or sys.argv, "workload": workload.spec(),
            "workload_digest": workload.digest(), "search_space": space.name,
            "search_space_spec": spaces.to_spec(space),
            "site_choices": len(space.site_choices),
            "strategy": searcher.settings(), "budget": budget,
            "accuracy_budget": accuracy_budget, "objective": asdict(objective),
            "seed": seed, "protocol": asdict(protocol), "onnxruntime": onnxruntime.__version__,
            "providers": {a.name: a.how for a in providers.available().values()},
            "search_space_notes": list(space.notes),
            "python": platform.python_version(), "machine": machine()}


__all__ = ["tune", "join", "resume", "TuneResult", "pick_best", "default_cache"]
