"""Tunes every zoo model and prints baseline ms, tuned ms, speedup, accuracy and tuning time.

    .venv/bin/python benchmarks/zoo_tune.py [--budget 12] [--models resnet18 ...] [--keep-cache]

Measures for real: run it alone on the machine (no tests, no other benchmark). By default it
uses a fresh measurement cache so that every number here was measured in this run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from autotune import space, workload, zoo
from autotune.measure import Cache
from autotune.objective import Objective
from autotune.tune import default_cache, tune


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    p.add_argument("--max-accuracy-drop", type=float, default=0.01)
    p.add_argument("--keep-cache", action="store_true", help="reuse cached measurements")
    args = p.parse_args()
    for name in args.models:  # training first, so that it is not part of the tuning time
        zoo.ensure(name)
    with tempfile.TemporaryDirectory() as tmp:
        cache = default_cache() if args.keep_cache else Cache(Path(tmp) / "measurements.sqlite")
        print(f"budget {args.budget}, max accuracy drop {args.max_accuracy_drop}, "
              f"CPU {os.cpu_count()} cores; speedups over ORT_ENABLE_ALL with 95% CI")
        for name in args.models:
            w = workload.load(f"zoo:{name}")
            start = time.perf_counter()
            result = tune(w, space.load("runtime"), budget=args.budget, out=Path(tmp) / name,
                          objective=Objective(max_accuracy_drop=args.max_accuracy_drop),
                          cache=cache, quiet=True)
            seconds = time.perf_counter() - start
            base = result.baseline.measurement
            if result.best is None:
                print(f"{name:20s} baseline {base.latency_ms:7.3f} ms  no candidate beat the baseline"
                      f"  top1 {base.accuracy:.4f}  tuning {seconds:4.0f} s", flush=True)
                continue
            m = result.best.measurement
            print(f"{name:20s} baseline {m.baseline_ms:7.3f} ms  tuned {m.latency_ms:7.3f} ms  "
                  f"speedup {m.speedup:.2f}x [{m.speedup_ci[0]:.2f}, {m.speedup_ci[1]:.2f}]  "
                  f"top1 {base.accuracy:.4f} -> {m.accuracy:.4f}  tuning {seconds:4.0f} s  "
                  f"({result.best.plan.describe()})", flush=True)


if __name__ == "__main__":
    main()
