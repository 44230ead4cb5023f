"""How well the cost-model estimator ranks Plans: Spearman's rank correlation between estimated
and measured speedup over ORT_ENABLE_ALL, on random plans of one space.

    .venv/bin/python benchmarks/estimator.py [--model resnet50] [--space cpu-int8] [--plans 50]
        [--seed 0] [--evaluation 64]

Profiles the model once (FP32 and all-INT8 kernels, ORT's profiler), draws --plans distinct
random plans, estimates each, measures each for real (interleaved with the baseline, through
the measurement cache), and prints both per plan, then the rank correlation with its p-value
and the median relative error of the estimated speedup. Measures for real: run it alone.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from autotune import space, workload, zoo
from autotune.estimator import Estimator, profile
from autotune.measure import Measurer
from autotune.plan import InvalidPlan
from autotune.tune import default_cache, sites_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--space", default="cpu-int8")
    p.add_argument("--plans", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluation", type=int, default=64)
    args = p.parse_args()
    zoo.ensure(args.model)
    w = workload.load(workload={"name": f"{args.model}-fidelity{args.evaluation}",
                                "model": f"zoo:{args.model}", "metric": "fidelity",
                                "data": {"source": "zoo", "evaluation": args.evaluation}})
    sites = sites_of(w)
    s = space.load(args.space).bind(sites)
    start = time.time()
    est = Estimator(profile(w), sites)
    print(f"profiled {args.model} in {time.time() - start:.0f} s; estimated baseline "
          f"{est.baseline_us / 1000:.2f} ms", flush=True)
    rng = np.random.default_rng(args.seed)
    plans, seen = [], set()
    while len(plans) < args.plans:
        try:
            plan = s.plan(s.sample(rng))
        except InvalidPlan:
            continue
        if plan.digest() not in seen:
            seen.add(plan.digest())
            plans.append(plan)
    measurer = Measurer(w, cache=default_cache())
    estimated, measured = [], []
    for i, plan in enumerate(plans):
        m = measurer.measure(plan)
        if not m.ok:
            print(f"{i:3d} failed: {m.reason}")
            continue
        estimated.append(est.speedup(plan))
        measured.append(m.speedup)
        print(f"{i:3d} estimated {estimated[-1]:.3f}x  measured {m.speedup:.3f}x  "
              f"{plan.describe()}", flush=True)
    rho, pvalue = stats.spearmanr(estimated, measured)
    error = np.median(np.abs(np.array(estimated) / np.array(measured) - 1))
    print(f"\n{len(measured)} plans measured: Spearman rho {rho:.3f} (p {pvalue:.2g}); median "
          f"relative error of the estimated speedup {error:.1%}")


if __name__ == "__main__":
    main()
