"""Experiments: a grid of workloads x strategies x seeds at one budget and one measurement
protocol (`experiments/*.yaml`), run cell by cell into one directory, resumable.

    name: cpu-zoo
    workloads: [../envs/resnet18.yaml, zoo:mobilenet_v2]   # files relative to this spec
    search_space: cpu-int8
    strategies:
      - presets                      # a strategy name, or a mapping:
      - {label: ppo-transfer, name: ppo, policy: transfer}
    seeds: [0, 1, 2]
    budget: 20                       # real measurements per cell, beyond the baseline
    accuracy_budget: 100             # accuracy evaluations per cell (topdown screens with them)
    max_accuracy_drop: 0.01
    objective: latency
    protocol: {min_seconds: 1.0}     # how candidates are timed (autotune.measure.Protocol)
    policies:                        # trained first (`autotune agent train`), on estimates
      transfer: {workloads: [../envs/resnet18.yaml], steps: 20000, seed: 0}

A cell is one `tune` run, `OUT/cells/<workload>/<label>/seed-<S>/`, with every cell's
measurements in one cache (`OUT/measurements.sqlite`): a plan two cells propose is measured
once. Cells run seed by seed, each seed's cells workload by workload and strategy by strategy,
so that a grid cut short stays balanced. A strategy that draws no random numbers (`presets`)
runs for the first seed only. Run again, the grid skips finished cells and resumes the one
that was stopped (`autotune.tune.resume`): at most the trial in flight is lost.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from autotune.errors import UsageError, did_you_mean
from autotune.measure import ACCURACY_BUDGET, Cache, Protocol
from autotune.objective import Objective

UNSEEDED = {"presets"}  # strategies that propose the same plans whatever the seed
_TOP = ("name", "description", "workloads", "search_space", "strategies", "seeds", "budget",
        "accuracy_budget", "max_accuracy_drop", "objective", "protocol", "policies")
_STRATEGY = ("name", "label", "policy")
_POLICY = ("workloads", "steps", "seed", "search_space")


@dataclass(frozen=True)
class Arm:
    """One strategy of the grid, under its label (a row of the report)."""

    label: str
    name: str
    policy: str | None = None  # a key of the spec's `policies`, or a policy.zip path


@dataclass(frozen=True)
class PolicySpec:
    key: str
    workloads: tuple[str, ...]
    steps: int
    seed: int
    search_space: str


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    path: Path
    workloads: tuple[str, ...]  # as `tune` takes them: a workload file, zoo:NAME or .onnx
    search_space: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    budget: int
    max_accuracy_drop: float
    objective: str
    protocol: Protocol
    policies: tuple[PolicySpec, ...]
    accuracy_budget: int = ACCURACY_BUDGET


@dataclass(frozen=True)
class Cell:
    workload: str  # the workload's name
    ref: str  # where it comes from
    arm: Arm
    seed: int

    def dir(self, out: Path) -> Path:
        return out / "cells" / self.workload / self.arm.label / f"seed-{self.seed}"

    def __str__(self) -> str:
        return f"{self.workload} · {self.arm.label} · seed {self.seed}"


# -- the spec ----------------------------------------------------------------------------


def load(path: Path | str) -> Spec:
    """Reads and checks an experiment spec; every mistake is one UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"experiment spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: an experiment is a mapping with workloads, strategies, seeds "
                         f"and budget")
    _known(raw, _TOP, str(path))
    for key in ("workloads", "strategies"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise UsageError(f"{path}: `{key}` must be a non-empty list")

    def ref(w: Any, where: str) -> str:
        if not isinstance(w, str):
            raise UsageError(f"{where}: a workload is a file path, zoo:NAME or wheel:NAME, got "
                             f"{w!r}")
        if w.startswith(("zoo:", "wheel:")):
            return w
        file = (path.parent / w).resolve()
        if not file.is_file():
            raise UsageError(f"{where}: workload file {w} does not exist (paths are relative to "
                             f"the spec)")
        return str(file)

    workloads = tuple(ref(w, str(path)) for w in raw["workloads"])
    policies = []
    for key, p in (raw.get("policies") or {}).items():
        where = f"{path}: policies.{key}"
        if not isinstance(p, dict) or not isinstance(p.get("workloads"), list):
            raise UsageError(f"{where}: give `workloads`, the list to train on")
        _known(p, _POLICY, where)
        policies.append(PolicySpec(key, tuple(ref(w, where) for w in p["workloads"]),
                                   _int(p.get("steps", 30_000), f"{where}.steps", 1),
                                   _int(p.get("seed", 0), f"{where}.seed", 0),
                                   str(p.get("search_space", raw.get("search_space", "cpu-int8")))))
    arms = []
    for s in raw["strategies"]:
        s = {"name": s} if isinstance(s, str) else s
        if not isinstance(s, dict) or "name" not in s:
            raise UsageError(f"{path}: a strategy is a name or a mapping with `name` (and "
                             f"`label`, `policy`), got {s!r}")
        _known(s, _STRATEGY, f"{path}: strategy {s.get('name')}")
        arm = Arm(str(s.get("label", s["name"])), str(s["name"]), s.get("policy"))
        _check_strategy(arm, {p.key for p in policies}, path)
        arms.append(arm)
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        twice = next(x for x in labels if labels.count(x) > 1)
        raise UsageError(f"{path}: two strategies are labelled `{twice}`; give each a `label`")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
        raise UsageError(f"{path}: `seeds` must be a non-empty list of integers")
    protocol = raw.get("protocol") or {}
    _known(protocol, tuple(f.name for f in fields(Protocol)), f"{path}: protocol")
    objective = str(raw.get("objective", "latency"))
    if objective not in ("latency", "memory", "pareto"):
        raise UsageError(f"{path}: objective is latency, memory or pareto, not `{objective}`")
    drop = raw.get("max_accuracy_drop", 0.01)
    if not isinstance(drop, (int, float)) or drop < 0:
        raise UsageError(f"{path}: max_accuracy_drop must be a number >= 0")
    from autotune import space

    space.load(str(raw.get("search_space", "runtime")))  # fails now, not after hours
    return Spec(str(raw.get("name", path.stem)), str(raw.get("description", "")), path,
                workloads, str(raw.get("search_space", "runtime")), tuple(arms),
                tuple(dict.fromkeys(seeds)), _int(raw.get("budget", 12), f"{path}: budget", 1),
                float(drop), objective, Protocol(**protocol), tuple(policies),
                _int(raw.get("accuracy_budget", ACCURACY_BUDGET), f"{path}: accuracy_budget", 0))


def _known(d: dict, keys: tuple[str, ...], where: str) -> None:
    for key in d:
        if key not in keys:
            raise UsageError(f"{where}: unknown key `{key}`.{did_you_mean(str(key), keys)} "
                             f"Known: {', '.join(keys)}")


def _int(value: Any, where: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UsageError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _check_strategy(arm: Arm, policies: set[str], path: Path) -> None:
    from autotune.strategies import NAMES

    if arm.name not in NAMES:
        raise UsageError(f"{path}: no strategy `{arm.name}`.{did_you_mean(arm.name, NAMES)} "
                         f"Known: {', '.join(NAMES)}")
    if arm.policy is None:
        return
    if arm.name != "ppo":
        raise UsageError(f"{path}: `policy` goes with strategy ppo, not {arm.name}")
    if arm.policy not in policies and not (path.parent / arm.policy).is_file():
        raise UsageError(f"{path}: policy `{arm.policy}` is neither under `policies` nor a "
                         f"file")


def workload_name(ref: str) -> str:
    """The name a workload reference will have, without loading it (no zoo training)."""
    if ref.startswith(("zoo:", "wheel:")):
        return ref.split(":", 1)[1]
    if ref.endswith((".yaml", ".yml")):
        spec = yaml.safe_load(Path(ref).read_text()) or {}
        if isinstance(spec, dict) and spec.get("name"):
            return str(spec["name"])
    return Path(ref).stem


def load_workload(ref: str):
    """A workload file, or a model reference (zoo:NAME, wheel:NAME, .onnx) with defaults."""
    from autotune import workload as workloads

    if ref.endswith((".yaml", ".yml")):
        return workloads.load(workload=ref)
    return workloads.load(ref)


def cells(spec: Spec) -> list[Cell]:
    """The grid, in the order it runs: seed by seed, workload by workload, strategy by strategy."""
    names = [workload_name(w) for w in spec.workloads]
    if len(set(names)) != len(names):
        raise UsageError(f"{spec.path}: two workloads are named "
                         f"`{next(n for n in names if names.count(n) > 1)}`; give each its own "
                         f"`name`")
    return [Cell(name, ref, arm, seed) for seed in spec.seeds for name, ref in zip(names, spec.workloads)
            for arm in spec.arms if arm.name not in UNSEEDED or seed == spec.seeds[0]]


# -- the state of a grid on disk ----------------------------------------------------------


def finished(cell_dir: Path) -> bool:
    from autotune.store import RunStore

    return RunStore(cell_dir).finished()


def measured(cell_dir: Path) -> list:
    """The trials a cell's run holds (baselines left out); none if it never started."""
    from autotune.store import RunStore

    store = RunStore(cell_dir)
    if not store.exists():
        return []
    return [t for t in store.trials() if not t.is_baseline]


def seconds_per_measurement(out: Path, workload: str) -> float | None:
    """The median wall time of this workload's real measurements in the grid so far."""
    times = [t.measurement.seconds for d in (out / "cells" / workload).glob("*/seed-*")
             for t in measured(d) if not t.measurement.cached and t.measurement.seconds]
    return statistics.median(times) if times else None


def plan_lines(spec: Spec, out: Path) -> list[str]:
    """`--dry-run`: every cell, its state, and the time the rest should take."""
    grid = cells(spec)
    guess = 2 * spec.protocol.min_seconds + 6.0  # build, calibrate, time, evaluate
    per = {c.workload: seconds_per_measurement(out, c.workload) for c in grid}
    lines, total, todo = [], 0.0, 0
    for p in spec.policies:
        done = (out / "policies" / f"{p.key}.zip").is_file()
        lines.append(f"  policy {p.key}: {'trained' if done else 'to train'} on "
                     f"{', '.join(workload_name(w) for w in p.workloads)}, {p.steps} steps")
    for c in grid:
        d = c.dir(out)
        if finished(d):
            lines.append(f"  {c}: done")
            continue
        spent = sum(not t.measurement.cached for t in measured(d))
        left = spec.budget - spent + (0 if spent else 1)  # + the baseline, once
        seconds = left * (per[c.workload] or guess)
        total += seconds
        todo += 1
        state = f"resumes after {spent} of {spec.budget}" if d.exists() else "to run"
        lines.append(f"  {c}: {state}, ~{_duration(seconds)}")
    known = ", ".join(f"{w} {s:.0f} s" for w, s in per.items() if s) or "none yet"
    head = (f"{spec.name}: {len(grid)} cells ({len(grid) - todo} done), budget {spec.budget} "
            f"real measurements per cell, into {out}")
    tail = (f"to run: {todo} cells, about {_duration(total)} if every measurement is new "
            f"(seconds per measurement measured so far: {known}; otherwise ~{guess:.0f} s "
            f"guessed; cache hits are faster)")
    return [head, *lines, tail]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- running ------------------------------------------------------------------------------


def run(spec: Spec, out: Path, *, quiet: bool = False,
        measurer_for: Callable | None = None) -> list[Cell]:
    """Runs every cell of the grid not finished yet; returns the cells run (or resumed).
    `measurer_for(workload, protocol, cache)` replaces the real measurer (tests)."""
    from autotune import space as spaces
    from autotune import tune as tuning

    out = Path(out)
    grid = cells(spec)
    out.mkdir(parents=True, exist_ok=True)
    _write_spec(spec, out)
    cache = Cache(out / "measurements.sqlite")
    display = GridProgress(spec.budget, grid, quiet)
    objective = Objective(target=spec.objective, max_accuracy_drop=spec.max_accuracy_drop)
    ran = []
    with display:
        policies = {}
        for p in spec.policies:
            policies[p.key] = _policy(spec, p, out, cache, display)
        loaded: dict[str, Any] = {}
        space = spaces.load(spec.search_space)
        for cell in grid:
            d = cell.dir(out)
            if finished(d):
                display.skip(cell)
                continue
            if cell.ref not in loaded:
                display.status(f"loading {cell.workload}")
                loaded[cell.ref] = load_workload(cell.ref)
            w = loaded[cell.ref]
            policy = None
            if cell.arm.policy is not None:
                policy = policies.get(cell.arm.policy) or (spec.path.parent / cell.arm.policy)
            measurer = measurer_for(w, spec.protocol, cache) if measurer_for else None
            display.start(cell)
            start = time.monotonic()
            if (d / "run.json").is_file():
                result = tuning.resume(d, cache=cache, measurer=measurer, progress=display)
            else:
                shutil.rmtree(d, ignore_errors=True)  # stopped before it recorded anything
                result = tuning.tune(w, space, strategy=cell.arm.name, budget=spec.budget,
                                     accuracy_budget=spec.accuracy_budget, objective=objective, seed=cell.seed, out=d,
                                     protocol=spec.protocol, cache=cache, measurer=measurer,
                                     policy=policy, progress=display,
                                     command=["autotune", "experiment", "run", str(spec.path)])
            display.finish(cell, result, time.monotonic() - start)
            ran.append(cell)
    return ran


def _write_spec(spec: Spec, out: Path) -> None:
    """OUT/experiment.json: the spec as run (the report reads names and settings from it)."""
    from dataclasses import asdict

    data = {"name": spec.name, "description": spec.description, "spec": str(spec.path),
            "workloads": [workload_name(w) for w in spec.workloads],
            "search_space": spec.search_space, "strategies": [asdict(a) for a in spec.arms],
            "seeds": list(spec.seeds), "budget": spec.budget,
            "accuracy_budget": spec.accuracy_budget, "max_accuracy_drop": spec.max_accuracy_drop, "objective": spec.objective,
            "protocol": asdict(spec.protocol), "policies": [asdict(p) for p in spec.policies]}
    (out / "experiment.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def _policy(spec: Spec, p: PolicySpec, out: Path, cache: Cache, display: GridProgress) -> Path:
    """The policy `p`, trained once (on estimates) into OUT/policies/<key>.zip."""
    from autotune import agents
    from autotune import space as spaces

    target = out / "policies" / f"{p.key}.zip"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    display.status(f"training policy {p.key} ({p.steps} steps, on estimates)")
    partial = target.with_name(f"{p.key}.partial.zip")
    plans = agents.train([load_workload(w) for w in p.workloads], spaces.load(p.search_space),
                         partial, steps=p.steps, seed=p.seed,
                         max_accuracy_drop=spec.max_accuracy_drop, cache=cache, quiet=True)
    (target.with_suffix(".json")).write_text(json.dumps(plans, indent=2) + "\n")
    partial.replace(target)
    for plan in plans:
        display.say(f"policy {p.key} on {plan['workload']}: estimated "
                    f"{plan['estimated_speedup']:.2f}x with {plan['plan']}")
    return target


class GridProgress:
    """One bar over the grid's measurements, one line per cell; stands in for a run's own
    `Progress` while the run is a cell of the grid."""

    def __init__(self, budget: int, grid: list[Cell], quiet: bool) -> None:
        from autotune.progress import Progress

        self.budget = budget
        self.bar = Progress(budget * len(grid), quiet=quiet)
        self.offset = 0
        self.index = {c: i + 1 for i, c in enumerate(grid)}
        self.n = len(grid)

    def __enter__(self) -> GridProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    # the run's Progress interface ------------------------------------------------------
    def say(self, text: str) -> None:
        if not text.startswith("[dim]"):  # a run's notes on defaults: said once per workload
            self.bar.say(text)

    def status(self, text: str) -> None:
        self.bar.status(f"{self.cell} · {text}" if getattr(self, "cell", None) else text)

    def trial(self, t, best) -> None:
        if best is not None:
            self.bar.best(f"best {best.score:.2f}x")

    def done(self, measurements: int, evaluations: int = 0) -> None:
        self.bar.done(self.offset + min(measurements, self.budget), evaluations)

    # the grid's ------------------------------------------------------------------------
    def skip(self, cell: Cell) -> None:
        self.offset += self.budget
        self.bar.done(self.offset)

    def start(self, cell: Cell) -> None:
        self.cell = f"[{self.index[cell]}/{self.n}] {cell}"
        self.bar.best("best: baseline")

    def finish(self, cell: Cell, result, seconds: float) -> None:
        best = f"best {result.best.score:.2f}x (#{result.best.number})" if result.best else \
            "nothing beat the baseline"
        self.bar.say(f"{self.cell}: {best}, {result.measurements_used} measured of "
                     f"{len(result.trials)} evaluated, {_duration(seconds)}")
        self.offset += self.budget
        self.cell = None
        self.bar.done(self.offset)
