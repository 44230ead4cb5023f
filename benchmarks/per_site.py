"""Whole-model against per-site tuning, per zoo model, at the same measurement budget.

    .venv/bin/python benchmarks/per_site.py [--models resnet50 ...] [--budget 16]
        [--metric top1|fidelity] [--max-accuracy-drop 0.005]

For each model: the ORT_ENABLE_ALL baseline; the best whole-model configuration (random search
over search_spaces/runtime.yaml); the best per-site configuration (greedy over cpu-int8.yaml
for CNNs, full.yaml otherwise); each as latency ratio to the baseline (timed interleaved with
it, 95% CI), accuracy, and peak memory. Measures for real: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from autotune import space, workload, zoo
from autotune.measure import Cache
from autotune.objective import Objective
from autotune.tune import TuneResult, tune


def _row(label: str, r: TuneResult, metric: str) -> str:
    base = r.baseline.measurement
    if r.best is None:
        return f"  {label:11s} none qualified (baseline {base.latency_ms:.3f} ms)"
    m = r.best.measurement
    acc = f"error {m.output_error:.4f}" if metric == "fidelity" else f"top1 {base.accuracy:.4f} -> {m.accuracy:.4f}"
    return (f"  {label:11s} {m.speedup:.2f}x [{m.speedup_ci[0]:.2f}, {m.speedup_ci[1]:.2f}]  {acc}  "
            f"peak {m.peak_memory_mb:.1f} MB (baseline {base.peak_memory_mb:.1f})  {r.best.plan.describe()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--metric", choices=["top1", "fidelity"], default="fidelity")
    p.add_argument("--max-accuracy-drop", type=float, default=0.005)
    p.add_argument("--evaluation", type=int, default=None,
                   help="evaluation samples (default: the workload's, all 359 held-out digits)")
    args = p.parse_args()
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    print(f"budget {args.budget} per search, metric {args.metric}, limit {args.max_accuracy_drop}")
    for name in args.models:
        zoo.ensure(name)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "measurements.sqlite")  # every number measured in this run
        for name in args.models:
            metric = args.metric if zoo.get(name).labeled else "fidelity"
            spec = {"model": f"zoo:{name}", "metric": metric, "data": {"source": "zoo"}}
            if args.evaluation:
                spec["data"]["evaluation"] = args.evaluation
            w = workload.load(workload=spec)
            per_site = "cpu-int8" if zoo.get(name).input_kind != "tokens" else "full"
            start = time.perf_counter()
            whole = tune(w, space.load("runtime"), strategy="random", budget=args.budget,
                         objective=objective, out=Path(tmp) / name / "whole", cache=cache, quiet=True)
            sites = tune(w, space.load(per_site), strategy="greedy", budget=args.budget,
                         objective=objective, out=Path(tmp) / name / "sites", cache=cache, quiet=True)
            print(f"{name}  (baseline ORT_ENABLE_ALL {whole.baseline.measurement.latency_ms:.3f} ms, "
                  f"{time.perf_counter() - start:.0f} s)")
            print(_row("whole-model", whole, metric))
            print(_row("per-site", sites, metric), flush=True)


if __name__ == "__main__":
    main()
