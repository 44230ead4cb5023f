"""Real models on their tasks: ORT_ENABLE_ALL, whole-model INT8 as ONNX Runtime's quantizer gives
it by hand, and the tuned result at a limit of one point of the task metric, from one
interleaved run per model, judged on held-out data the search never saw.

    .venv/bin/python benchmarks/real_models.py [--models wheel:ppocr_rec ...] [--budget 24]
        [--strategy greedy] [--search-space cpu-int8] [--out RUNS]

For each workload (`wheel:ppocr_rec`: character accuracy of rendered text lines;
`wheel:ppocr_det`: text-box F1 on rendered pages; `wheel:ppocr_cls`: top-1 on upright and
turned lines; `wheel:minilm`: cosine to the FP32 embeddings of real sentences): `tune` over
the search space with the strategy, then the baseline, static INT8 by hand (per-channel and
per-tensor, MinMax), dynamic INT8 by hand and the tuned configuration timed again together
(`Measurer.compare`, ABBA interleaving) with their accuracy on the held-out split. Printed:
speedup over ORT_ENABLE_ALL with its 95% CI, the task score and its drop. Measures for real:
run it alone on the machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxruntime

from autotune import space, workload
from autotune.measure import Cache, Measurer, Protocol, machine
from autotune.metrics import label
from autotune.objective import Objective
from autotune.plan import Plan
from autotune.space import SearchSpace
from autotune.tune import tune

MODELS = ["wheel:ppocr_rec", "wheel:ppocr_det", "wheel:ppocr_cls", "wheel:minilm"]
FINAL = Protocol(min_runs=60, min_seconds=6.0, max_seconds=60.0)  # the one interleaved run
# A point of the metric: 0.01 of character accuracy, box F1, top-1, or cosine.
LIMIT = 0.01
_HAND = SearchSpace("by-hand", "", ())
BY_HAND = {
    "static INT8 by hand (per-channel)": {"quantization": "static"},
    "static INT8 by hand (per-tensor)": {"quantization": "static", "quantization.per_channel": False},
    "dynamic INT8 by hand": {"quantization": "dynamic"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--search-space", default="cpu-int8")
    p.add_argument("--strategy", default="greedy")
    p.add_argument("--budget", type=int, default=24)
    p.add_argument("--max-accuracy-drop", type=float, default=LIMIT)
    p.add_argument("--out", type=Path, help="keep each model's run directory (and its best/) "
                   "here, for `autotune verify`; by default they are deleted")
    args = p.parse_args()
    print(f"{machine()['cpu']}, {machine()['cores']} cores, onnxruntime {onnxruntime.__version__}; "
          f"{args.search_space}/{args.strategy}, budget {args.budget}, limit "
          f"{args.max_accuracy_drop} of the task metric")
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "measurements.sqlite")  # every number measured in this run
        runs = args.out or Path(tmp)
        for ref in args.models:
            w = workload.load(ref)
            start = time.perf_counter()
            run = tune(w, space.load(args.search_space), strategy=args.strategy,
                       budget=args.budget, objective=objective, cache=cache, quiet=True,
                       out=runs / ref.replace(":", "-"))
            searched = time.perf_counter() - start
            tuned = run.best.plan if run.best else Plan()
            failed = sum(1 for t in run.trials if not t.measurement.ok)
            rows = [("ORT_ENABLE_ALL", Plan())]
            rows += [(name, _HAND.plan(choice)) for name, choice in BY_HAND.items()]
            rows.append(("tuned", tuned))
            final = Measurer(w, FINAL).compare([plan for _, plan in rows], split="holdout")
            base = final[0]
            what = label(w.metric.name)
            print(f"\n{ref}: {what} on {w.data.holdout} held-out samples (tune: {searched:.0f} s, "
                  f"{len(run.trials)} trials, {failed} failed; ORT_ENABLE_ALL "
                  f"{base.latency_ms:.2f} ms in the final run)")
            print(f"  {'configuration':36s} {'speedup [95% CI]':>24s} {what:>20s} {'drop':>8s}  plan")
            for (name, plan), m in zip(rows, final):
                if not m.ok:
                    print(f"  {name:36s} failed: {m.reason}")
                    continue
                drop = Objective.accuracy_drop(m, base)
                score = m.output_error if w.metric.name == "fidelity" else m.accuracy
                print(f"  {name:36s} {m.speedup:7.3f}x [{m.speedup_ci[0]:.3f}, "
                      f"{m.speedup_ci[1]:.3f}] {score:20.4f} {drop:8.4f}  {plan.describe()}",
                      flush=True)
            if run.best is None:
                print("  (tuned: nothing beat ORT_ENABLE_ALL within the limit; the baseline)")


if __name__ == "__main__":
    main()
