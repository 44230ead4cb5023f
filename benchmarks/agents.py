"""RL agents against the baselines: PPO against random search, and a trained policy
transferred to a model it never saw.

    .venv/bin/python benchmarks/optuna_baselines.py samplers --model resnet18 \
        --strategies random ppo --out benchmarks/runs/ppo-resnet18
    .venv/bin/python benchmarks/agents.py transfer [--train resnet18 mobilenet_v2
        transformer_encoder] [--target resnet50] [--budget 10] [--seeds 0 1 2]
        [--steps 30000] [--reference benchmarks/runs/samplers] [--out benchmarks/runs/transfer]

The first is PPO (learning from scratch on real measurements) against random search at the
same budget of real measurements; it prints the mean best and its 95% CI over seeds.

transfer: trains one policy over the --train models (`autotune agent train`, on estimated
measurements: the cost model and each site's accuracy cost measured once), then tunes --target
with `--strategy ppo --policy` and --budget real measurements per seed, and compares the best
speedup within the accuracy limit with what TPE found in 100 evaluations on the same workload
(the `samplers` runs under --reference, which must exist: run `optuna_baselines.py samplers`
first). The target reached: the transferred policy's mean best is at least 90% of TPE's mean
best. Every workload is judged by fidelity to its FP32 model on --evaluation samples, as in
optuna_baselines.py. Resumable: the policy and finished runs are kept under --out.

Both measure for real: run them alone, never beside another timing job or the tests.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from optuna_baselines import _candidates, _interval, _workload, best_after  # beside this file

from autotune import space
from autotune.agents import train
from autotune.measure import Cache
from autotune.objective import Objective
from autotune.tune import tune

ROOT = Path(__file__).resolve().parent.parent


def transfer(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    policy = args.out / "policy.zip"
    cache = Cache(args.out / "measurements.sqlite")
    if not policy.is_file():
        start = time.time()
        plans = train([_workload(m, args.evaluation) for m in args.train], space.load(args.space),
                      policy, steps=args.steps, seed=0, max_accuracy_drop=args.max_accuracy_drop,
                      cache=cache, tensorboard=args.out / "tensorboard")
        print(f"trained on {', '.join(args.train)} ({args.steps} steps): "
              f"{time.time() - start:.0f} s; the policy's own plans, estimated:")
        for p in plans:
            print(f"  {p['workload']}: {p['estimated_speedup']:.2f}x, error "
                  f"{p['estimated_accuracy_drop']:.4f}: {p['plan']}", flush=True)
    target = _workload(args.target, args.evaluation)
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    found = {}
    for seed in args.seeds:
        run = args.out / f"ppo-{seed}"
        if not (run / "best" / "report.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            start = time.time()
            tune(target, space.load(args.space), strategy="ppo", policy=policy,
                 budget=args.budget, objective=objective, seed=seed, out=run, cache=cache,
                 quiet=True, command=sys.argv)
            print(f"  ppo with the policy, seed {seed}: {time.time() - start:.0f} s", flush=True)
        found[seed] = _candidates(run)
    reference = {}
    for seed in args.seeds:
        run = args.reference / f"tpe-{seed}"
        if not (run / "best" / "report.json").is_file():
            raise SystemExit(f"no finished TPE run {run}: run optuna_baselines.py samplers first")
        reference[seed] = _candidates(run)
    ppo = [best_after(t, args.budget) for t in found.values()]
    tpe = [best_after(t, 100) for t in reference.values()]
    print(f"\n{args.target}: best speedup within the limit (mean and 95% CI over seeds)")
    print(f"  policy from {', '.join(args.train)}, {args.budget} measured evaluations: "
          f"{_interval(ppo)}  (seeds {' '.join(f'{v:.3f}' for v in ppo)})")
    print(f"  TPE from scratch, 100 evaluations:                         {_interval(tpe)}  "
          f"(seeds {' '.join(f'{v:.3f}' for v in tpe)})")
    for seed, trials in found.items():
        used = sum(not t.measurement.cached for t in trials)
        best = max((t for t in trials if t.exportable), key=lambda t: t.score, default=None)
        what = f"#{best.number} {best.plan.describe()}" if best else "nothing qualified"
        print(f"  seed {seed}: {used} measured of {len(trials)} evaluated; best {what}")
    ratio = float(np.mean(ppo)) / float(np.mean(tpe))
    print(f"\nthe transferred policy reaches {ratio:.1%} of TPE's mean best "
          f"({'at least' if ratio >= 0.9 else 'below'} the 90% target)")
    print(json.dumps({"ppo": ppo, "tpe": tpe, "ratio": ratio}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("transfer")
    t.add_argument("--train", nargs="+", default=["resnet18", "mobilenet_v2",
                                                  "transformer_encoder"])
    t.add_argument("--target", default="resnet50")
    t.add_argument("--space", default="cpu-int8")
    t.add_argument("--budget", type=int, default=10)
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    t.add_argument("--steps", type=int, default=30_000)
    t.add_argument("--reference", type=Path, default=ROOT / "benchmarks/runs/samplers")
    t.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs/transfer")
    t.add_argument("--evaluation", type=int, default=64,
                   help="evaluation samples per measurement (default 64)")
    t.add_argument("--max-accuracy-drop", type=float, default=0.005,
                   help="the fidelity output error allowed (default 0.005: 0.5%%)")
    args = p.parse_args()
    transfer(args)


if __name__ == "__main__":
    main()
