"""Measures the same candidates twice in a row, uncached, and prints how far the medians moved.

    .venv/bin/python benchmarks/repeatability.py [--model resnet18]

The target: medians of the same candidate within 5% of each other. Run it alone on the machine.
"""
from __future__ import annotations

import argparse

from autotune import workload
from autotune.measure import Measurer
from autotune.plan import Plan, Quantization


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    args = p.parse_args()
    measurer = Measurer(workload.load(f"zoo:{args.model}"))  # no cache: every run is real
    for label, plan in [("baseline plan", Plan()), ("INT8 per-channel", Plan(quantization=Quantization()))]:
        a, b = measurer.measure(plan), measurer.measure(plan)
        for what, x, y in [("candidate median ms", a.latency_ms, b.latency_ms),
                           ("baseline median ms", a.baseline_ms, b.baseline_ms),
                           ("speedup", a.speedup, b.speedup)]:
            print(f"{args.model} {label:17s} {what:20s} {x:8.3f} then {y:8.3f}  "
                  f"differ {abs(x - y) / min(x, y) * 100:4.1f}%", flush=True)


if __name__ == "__main__":
    main()
