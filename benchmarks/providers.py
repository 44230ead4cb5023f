"""Execution providers against the CPU provider: what OpenVINO gives by itself, and what the tuner
finds with the provider as one of its choices, per model, from one interleaved run.

    .venv/bin/python benchmarks/providers.py [--models zoo:resnet18 wheel:ppocr_det ...]
        [--search-space runtime] [--strategy random] [--budget 12] [--out RUNS]

(On a CPU whose vendor the onnxruntime-ep-openvino plugin does not serve, AMD's, run it with
`.venv-openvino/bin/python` after `./setup.sh --openvino-build`.)

For each model: `tune` with the space's defaults (the README's first command: random search,
12 real measurements, accuracy limit 0.01 of the workload's metric), then ORT_ENABLE_ALL on the
CPU provider, the OpenVINO provider with its defaults, OpenVINO with whole-model static INT8
by hand (ORT's quantizer at its defaults), and the tuned configuration, all timed again
together in one interleaved run (`Measurer.compare`). Printed: the speedup over ORT_ENABLE_ALL
with its 95% CI, the accuracy against the baseline's (top-1 drop, or fidelity output error),
and the plan. Measures for real: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxruntime

from autotune import providers, space, workload
from autotune.measure import Cache, Measurer, Protocol, machine
from autotune.metrics import drop_name
from autotune.objective import Objective
from autotune.plan import Plan
from autotune.strategies import Presets
from autotune.tune import tune

MODELS = ["zoo:resnet18", "zoo:mobilenet_v2", "wheel:ppocr_det", "wheel:ppocr_cls"]
FINAL = Protocol(min_runs=60, min_seconds=6.0, max_seconds=60.0)  # the one interleaved run
# What a user who knows the provider gets without tuning: the presets strategy's plans for it.
BY_HAND = dict(zip(("OpenVINO EP, defaults", "OpenVINO EP + INT8 by hand"),
                   ({"execution_provider": "openvino", **extra} for extra in Presets.PER_PROVIDER)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--search-space", default="runtime")
    p.add_argument("--strategy", default="random")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--max-accuracy-drop", type=float, default=0.01)
    p.add_argument("--out", type=Path, help="keep each model's run directory (and its best/) "
                   "here, for `autotune verify`; by default they are deleted")
    args = p.parse_args()
    found = providers.available()
    print(f"{machine()['cpu']}, {machine()['cores']} cores, onnxruntime {onnxruntime.__version__}; "
          + "; ".join(f"{a.name}: {a.how}" for a in found.values() if a.ok))
    if not found["openvino"].ok:
        print(f"OpenVINO: {found['openvino'].how}")
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    by_hand = {label: space.SearchSpace("by-hand", "", ()).plan(a) for label, a in BY_HAND.items()
               if found[a["execution_provider"]].ok}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "measurements.sqlite")  # every number measured in this run
        runs = args.out or Path(tmp)
        for ref in args.models:
            w = workload.load(ref)
            start = time.perf_counter()
            run = tune(w, space.load(args.search_space), strategy=args.strategy,
                       budget=args.budget, objective=objective, cache=cache, quiet=True,
                       out=runs / ref.replace(":", "-"))
            tuned = run.best.plan if run.best else Plan()
            searched = time.perf_counter() - start
            rows = [("CPU EP, ORT_ENABLE_ALL", Plan()), *by_hand.items(), ("tuned", tuned)]
            final = Measurer(w, FINAL).compare([plan for _, plan in rows])
            what = drop_name(w.metric.name)
            print(f"\n{ref}  (tune: {searched:.0f} s, {args.budget} measurements, "
                  f"{args.search_space}/{args.strategy}; ORT_ENABLE_ALL {final[0].latency_ms:.2f} ms "
                  f"in the final run)")
            print(f"  {'configuration':28s} {'speedup [95% CI]':>24s} {what:>13s}  plan")
            for (label, plan), m in zip(rows, final):
                if not m.ok:
                    print(f"  {label:28s} failed: {m.reason}")
                    continue
                error = Objective.accuracy_drop(m, final[0])
                print(f"  {label:28s} {m.speedup:7.3f}x [{m.speedup_ci[0]:.3f}, "
                      f"{m.speedup_ci[1]:.3f}] {error:13.4f}  {plan.describe()}", flush=True)
            if run.best is None:
                print("  (tuned: nothing beat ORT_ENABLE_ALL within the limit; the baseline)")


if __name__ == "__main__":
    main()
