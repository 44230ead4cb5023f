"""Optuna's samplers as baselines: TPE against random search, and a Pareto search.
(PPO against random search on resnet18 is the same `samplers` run: see benchmarks/agents.py.)

    .venv/bin/python benchmarks/optuna_baselines.py samplers [--model resnet50]
        [--space cpu-int8] [--strategies random tpe] [--seeds 0 1 2] [--evaluations 100]
        [--out benchmarks/runs/samplers]
    .venv/bin/python benchmarks/optuna_baselines.py pareto [--model mobilenet_v2]
        [--space runtime] [--strategy nsga2] [--budget 40] [--out benchmarks/runs/pareto]

samplers: one `tune` run per strategy and seed (seed by seed, the strategies in turn, so that a
cut-short benchmark stays balanced), all with one measurement cache under --out: a plan two
runs propose is measured once and both see the same number. An evaluation is a trial the
strategy proposed, measured or found in the cache; each run's budget is --evaluations real
measurements, and its first --evaluations trials are scored. Printed per strategy: the best
speedup over ORT_ENABLE_ALL within the accuracy limit (1.00 where nothing qualified) after
10, 25, 50 and all evaluations, as mean and 95% t-interval over the seeds, then each seed.
Resumable: a finished run directory is read, not run again.

pareto: one multi-objective run (speedup, peak-memory reduction, accuracy drop); every
candidate on its Pareto front within the accuracy limit is exported with
`autotune export RUN_DIR --pick N` and checked with `autotune verify`, one after another.

Both measure for real (fidelity to the FP32 model on --evaluation samples): run them alone,
never beside another timing job or the tests.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from autotune import pareto, space, workload, zoo
from autotune.measure import Cache, Protocol
from autotune.objective import Objective
from autotune.report import interval
from autotune.store import RunStore, Trial
from autotune.tune import tune

ROOT = Path(__file__).resolve().parent.parent
AUTOTUNE = Path(sys.executable).parent / "autotune"


def _workload(model: str, evaluation: int):
    zoo.ensure(model)
    return workload.load(workload={"name": f"{model}-fidelity{evaluation}", "model": f"zoo:{model}",
                                   "metric": "fidelity",
                                   "data": {"source": "zoo", "evaluation": evaluation}})


def _candidates(run: Path) -> list[Trial]:
    return sorted((t for t in RunStore(run).trials() if not t.is_baseline), key=lambda t: t.number)


def best_after(trials: list[Trial], n: int) -> float:
    """The best exportable score among the first n evaluations; 1.0: nothing beat the baseline."""
    return max((t.score for t in trials[:n] if t.exportable), default=1.0)


def _interval(values: list[float]) -> str:
    mean, lo, hi = interval(values)  # mean and 95% t-interval, as the report gives them
    return f"{mean:.3f}" if lo is None else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def samplers(args) -> None:
    w = _workload(args.model, args.evaluation)
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    protocol = Protocol()
    cache = Cache(args.out / "measurements.sqlite")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.model}, space {args.space}, {args.evaluations} evaluations, seeds "
          f"{' '.join(map(str, args.seeds))}; fidelity output error limit {args.max_accuracy_drop} "
          f"on {args.evaluation} samples", flush=True)
    results: dict[str, dict[int, list[Trial]]] = {s: {} for s in args.strategies}
    for seed in args.seeds:
        for strategy in args.strategies:
            run = args.out / f"{strategy}-{seed}"
            if not (run / "best" / "report.json").is_file():  # not finished: run it (again)
                if run.exists():
                    import shutil

                    shutil.rmtree(run)
                start = time.time()
                tune(w, space.load(args.space), strategy=strategy, budget=args.evaluations,
                     objective=objective, seed=seed, out=run, protocol=protocol, cache=cache,
                     quiet=True, command=sys.argv)
                print(f"  {strategy} seed {seed}: {time.time() - start:.0f} s", flush=True)
            results[strategy][seed] = _candidates(run)
    marks = sorted({10, 25, 50, args.evaluations} - {n for n in (10, 25, 50) if n > args.evaluations})
    print(f"\nbest speedup within the limit after N evaluations (mean and 95% CI over seeds)")
    print(f"{'strategy':10s} " + " ".join(f"{'N=' + str(n):>24s}" for n in marks)
          + "  measured/evaluations")
    for strategy, by_seed in results.items():
        cells = [_interval([best_after(t, n) for t in by_seed.values()]) for n in marks]
        used = [f"{sum(not x.measurement.cached for x in t[:args.evaluations])}/"
                f"{len(t[:args.evaluations])}" for t in by_seed.values()]
        print(f"{strategy:10s} " + " ".join(f"{c:>24s}" for c in cells) + "  " + " ".join(used))
    print("\nper seed, best after all evaluations (trial number, plan):")
    for strategy, by_seed in results.items():
        for seed, trials in by_seed.items():
            ok = [t for t in trials[:args.evaluations] if t.exportable]
            best = max(ok, key=lambda t: t.score, default=None)
            what = (f"{best.score:.3f}x  #{best.number} {best.plan.describe()}" if best
                    else "1.000x  nothing qualified")
            print(f"  {strategy:8s} seed {seed}: {what}")
    means = {s: np.mean([best_after(t, args.evaluations) for t in by.values()])
             for s, by in results.items()}
    for name in (s for s in means if s != "random" and "random" in means):
        verdict = "at least" if means[name] >= means["random"] else "below"
        print(f"\n{name}'s mean best ({means[name]:.3f}) is {verdict} random search's "
              f"({means['random']:.3f}).")


def _cli(*argv: str) -> tuple[int, str]:
    proc = subprocess.run([str(AUTOTUNE), *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1]


def pareto_run(args) -> None:
    w = _workload(args.model, args.evaluation)
    objective = Objective("pareto", max_accuracy_drop=args.max_accuracy_drop)
    run = args.out
    if not (run / "best" / "report.json").is_file():
        start = time.time()
        tune(w, space.load(args.space), strategy=args.strategy, budget=args.budget,
             objective=objective, seed=args.seed, out=run,
             cache=Cache(run.parent / f"{run.name}-measurements.sqlite"), quiet=True,
             command=sys.argv)
        print(f"{args.strategy} on {args.model} ({args.space}), {args.budget} measurements: "
              f"{time.time() - start:.0f} s", flush=True)
    store = RunStore(run)
    ledger = store.ledger()
    baseline = ledger.baseline()
    trials = [t for t in ledger.trials() if not t.is_baseline]
    front = pareto.front(trials, baseline)
    print(f"{len(trials)} trials ({sum(not t.measurement.ok for t in trials)} failed); Pareto front "
          f"over (speedup, peak-memory reduction, accuracy drop): {len(front)} points")
    limit = objective.max_accuracy_drop + 1e-9
    passed = 0
    points = [t for t in front if not t.is_baseline]
    for t in points:
        speed, memory, drop = pareto.point(t, baseline)
        row = (f"  #{t.number:<3d} {speed:.3f}x  memory {memory:.2f}x  error {-drop:.4f}  "
               f"{t.plan.describe()}")
        if -drop > limit:
            print(row + "\n        outside the accuracy limit: not exported")
            continue
        dest = run / f"point-{t.number}"
        code, said = _cli("export", str(run), "--pick", str(t.number), "--out", str(dest))
        if code == 0:
            code, said = _cli("verify", str(dest))
        passed += code == 0
        print(row + f"\n        verify: {said}", flush=True)
    within = sum(-pareto.point(t, baseline)[2] <= limit for t in points)
    print(f"\n{within} candidate points within the accuracy limit, {passed} of them verified "
          f"(the baseline is a point of the front too)")
    print(json.dumps({"front": len(front), "candidates_within_limit": within, "verified": passed}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("samplers")
    s.add_argument("--model", default="resnet50")
    s.add_argument("--space", default="cpu-int8")
    s.add_argument("--strategies", nargs="+", default=["random", "tpe"])
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    s.add_argument("--evaluations", type=int, default=100)
    s.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs/samplers")
    pa = sub.add_parser("pareto")
    pa.add_argument("--model", default="mobilenet_v2")
    pa.add_argument("--space", default="runtime")
    pa.add_argument("--strategy", default="nsga2")
    pa.add_argument("--budget", type=int, default=40)
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs/pareto")
    for q in (s, pa):
        q.add_argument("--evaluation", type=int, default=64,
                       help="evaluation samples per measurement (default 64)")
        q.add_argument("--max-accuracy-drop", type=float, default=0.005,
                       help="the fidelity output error allowed (default 0.005: 0.5%%)")
    args = p.parse_args()
    (samplers if args.what == "samplers" else pareto_run)(args)


if __name__ == "__main__":
    main()
