"""Whole-model against per-site tuning, per zoo model, at the same measurement budget.

    .venv/bin/python benchmarks/per_site.py [--models resnet50 ...] [--budget 16]
        [--max-accuracy-drop 0.005] [--evaluation 64]

For each model, two searches with the same budget of real measurements:
- whole-model: random search over search_spaces/runtime.yaml (ORT levels, optimizer toggles,
  threads, memory settings, whole-model static INT8 with its settings);
- per-site: greedy over a per-site space (cpu-int8.yaml, per-region INT8, for the CNNs;
  lossless.yaml, fusion / layout / grouping sites only, for the transformer).
Then ORT_ENABLE_ALL, the best whole-model and the best per-site configuration (the baseline
where nothing qualified) are timed again together in one interleaved run. Printed per model:
the speedup over ORT_ENABLE_ALL (its median latency / the configuration's) with its 95% CI, the accuracy (fidelity output error against
the FP32 model, the limit being --max-accuracy-drop), the peak memory (measured alone in a fresh
process during the search) and what the configuration is. Measures for real: run it alone.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from autotune import space, workload, zoo
from autotune.measure import Cache, Measurer, Protocol
from autotune.objective import Objective
from autotune.plan import Plan
from autotune.tune import TuneResult, tune

PER_SITE_SPACE = {"transformer_encoder": "lossless"}  # the others: cpu-int8
FINAL = Protocol(min_runs=60, min_seconds=6.0, max_seconds=60.0)  # the one interleaved run


def _best(r: TuneResult) -> tuple[Plan, float | None, str]:
    """The best exportable plan, its peak memory and what it is; the baseline's if none."""
    t = r.best or r.baseline
    what = t.plan.describe() if r.best else "nothing qualified: the baseline configuration"
    return t.plan, t.measurement.peak_memory_mb, what


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--max-accuracy-drop", type=float, default=0.005,
                   help="the fidelity output error allowed (default 0.005: 0.5%%)")
    p.add_argument("--evaluation", type=int, default=64,
                   help="evaluation samples per measurement (default 64)")
    args = p.parse_args()
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    print(f"budget {args.budget} real measurements per search; fidelity output error limit "
          f"{args.max_accuracy_drop}; {args.evaluation} evaluation samples")
    for name in args.models:
        zoo.ensure(name)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "measurements.sqlite")  # every number measured in this run
        for name in args.models:
            w = workload.load(workload={"model": f"zoo:{name}", "metric": "fidelity",
                                        "data": {"source": "zoo", "evaluation": args.evaluation}})
            per_site = PER_SITE_SPACE.get(name, "cpu-int8")
            start = time.perf_counter()
            whole = tune(w, space.load("runtime"), strategy="random", budget=args.budget,
                         objective=objective, out=Path(tmp) / name / "whole", cache=cache, quiet=True)
            sites = tune(w, space.load(per_site), strategy="greedy", budget=args.budget,
                         objective=objective, out=Path(tmp) / name / "sites", cache=cache, quiet=True)
            rows = [("ORT_ENABLE_ALL", (Plan(), whole.baseline.measurement.peak_memory_mb,
                                        "the model as given")),
                    ("whole-model", _best(whole)), (f"per-site ({per_site})", _best(sites))]
            final = Measurer(w, FINAL).compare([plan for _, (plan, _, _) in rows])
            print(f"\n{name}  (searches and final run: {time.perf_counter() - start:.0f} s; "
                  f"ORT_ENABLE_ALL {final[0].latency_ms:.2f} ms)")
            print(f"  {'configuration':22s} {'speedup [95% CI]':>24s} {'output error':>13s} "
                  f"{'peak MB':>8s}  plan")
            for (label, (plan, peak, what)), m in zip(rows, final):
                if not m.ok:
                    print(f"  {label:22s} failed: {m.reason}")
                    continue
                print(f"  {label:22s} {m.speedup:7.3f}x [{m.speedup_ci[0]:.3f}, {m.speedup_ci[1]:.3f}] "
                      f"{m.output_error:13.5f} {peak:8.1f}  {what}", flush=True)


if __name__ == "__main__":
    main()
