"""Autotune beside the tools a user already has, on the same models, data and accuracy limit,
timed together in one interleaved run against ORT_ENABLE_ALL.

    .venv/bin/python benchmarks/peers.py [--models zoo:resnet18 wheel:ppocr_rec ...]
        [--max-accuracy-drop 0.005] [--strategies topdown greedy] [--budget 16]
        [--search-space cpu-int8] [--out DIR]

NNCF is optional: `pip install -e '.[peers]'` (without it, its rows say so). For each model:
- ORT's `quantize_static` by hand (per-channel and per-tensor, MinMax) and `quantize_dynamic`;
- NNCF `quantize` (its defaults: MinMax with fast bias correction), and NNCF
  `quantize_with_accuracy_control` at the same limit, scored by the same metric on the same
  evaluation split the tuner searches on (fidelity: 1 - output error, since NNCF limits a drop);
- the OpenVINO execution provider with its defaults, where this machine serves it;
- each autotune strategy, from its own empty cache, at `--budget` timings;
then all of them and the baseline timed in one interleaved run (`Measurer.compare`, ABBA) and
scored on held-out data none of them saw. Printed per model: speedup over ORT_ENABLE_ALL with
its 95% CI, the score and its drop, whether the drop is within the limit, and each tool's wall
time and evaluations. With `--out DIR`, DIR is also an `autotune report` of the strategies'
trials with the peers as rows beside them (DIR/peers.csv). Zoo models are judged by fidelity on 64 evaluation and 64 held-out digits;
wheel models by their task metric. Measures for real: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime

from autotune import providers, report, space, workload, worker
from autotune.measure import Cache, Measurement, Measurer, machine
from autotune.metrics import fidelity, label
from autotune.objective import Objective
from autotune.plan import Candidate, Plan, session_settings
from autotune.strategies import Presets
from autotune.tune import tune
from real_models import _HAND, BY_HAND, FINAL  # ORT's quantizer by hand, the final protocol

MODELS = ["zoo:resnet18", "zoo:mobilenet_v2", "zoo:yolo_like"]
STRATEGIES = ["topdown", "greedy"]
LIMIT = 0.005
ORT_BY_HAND = {"ORT " + name.replace(" by hand", ""): choice for name, choice in BY_HAND.items()}
OPENVINO = "OpenVINO EP, defaults"


@dataclass
class Row:
    tool: str
    built: Plan | Candidate | Measurement  # a Measurement: it failed before the timing
    seconds: float | None = None  # what the tool took to produce it
    cost: str = ""  # the evaluations it spent
    what: str = ""  # what the configuration is, if not said by its plan or model


def load(ref: str) -> workload.Workload:
    """Zoo models as the fidelity benchmarks judge them, with 64 held-out digits beside the
    evaluation split; anything else with its own workload defaults."""
    if ref.startswith("zoo:"):
        return workload.load(workload={
            "name": ref[4:], "model": ref, "metric": "fidelity",
            "data": {"source": "zoo", "evaluation": 64, "holdout": 64}})
    return workload.load(ref)


def ort_by_hand(m: Measurer, tmp: Path) -> list[Row]:
    rows = []
    for name, choice in ORT_BY_HAND.items():
        out = tmp / name.replace(" ", "_")
        out.mkdir()
        start = time.perf_counter()
        plan = _HAND.plan(choice)
        built = m.build(plan, out)
        rows.append(Row(name, built, time.perf_counter() - start, "none", plan.describe()))
    return rows


def nncf_rows(w: workload.Workload, limit: float, tmp: Path) -> list[Row]:
    """NNCF's two entry points on the workload's calibration and evaluation splits."""
    try:
        import nncf
        from nncf.common.logging import nncf_logger
    except ImportError:
        reason = "NNCF is not installed (pip install -e '.[peers]')"
        return [Row(t, Measurement.failed(reason)) for t in ("NNCF quantize", "NNCF accuracy control")]
    nncf_logger.setLevel(logging.WARNING)  # its INFO lists every node it reverts
    data = str(w.data_file())
    calibration, _ = worker.batches(data, "cal")
    feeds, labels = worker.batches(data, "eval")
    model = onnx.load(str(w.model_path))
    base = onnxruntime.InferenceSession(str(w.model_path), providers=["CPUExecutionProvider"])
    references = worker.outputs(base, feeds)
    calls = []

    def validate(candidate, items) -> tuple[float, None]:
        """The workload's metric on the evaluation items NNCF asks for, as a score whose drop
        NNCF limits: 1 - output error for fidelity, the score (negated if lower is better)."""
        index = list(items)
        calls.append(len(index))
        session = onnxruntime.InferenceSession(candidate.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        outs = worker.outputs(session, [feeds[i] for i in index])
        refs = [references[i] for i in index]
        if w.metric.name == "fidelity":
            return 1.0 - fidelity(outs, refs)[1], None
        score = w.metric.score(outs, refs, [feeds[i] for i in index],
                               None if labels is None else labels[index], w.model_path)
        return (score if w.metric.higher_is_better else -score), None

    kind = {"model_type": nncf.ModelType.TRANSFORMER} if _transformer(model) else {}
    settings = session_settings(Plan().runtime)
    cal = nncf.Dataset(calibration)
    jobs = {
        "NNCF quantize": lambda: nncf.quantize(model, cal, subset_size=len(calibration), **kind),
        "NNCF accuracy control": lambda: nncf.quantize_with_accuracy_control(
            model, cal, nncf.Dataset(range(len(feeds)), lambda i: feeds[i]), validate,
            max_drop=limit, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration),
            **kind),
    }
    rows = []
    for name, job in jobs.items():
        calls.clear()
        start = time.perf_counter()
        try:
            quantized = job()
        except Exception as exc:  # a peer's failure is a row with its reason, not a crash
            rows.append(Row(name, Measurement.failed(f"{type(exc).__name__}: {exc}"),
                            time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        path = tmp / f"{name.replace(' ', '_')}.onnx"
        onnx.save(quantized, str(path))
        rows.append(Row(name, Candidate(path.resolve(), settings), seconds,
                        f"{len(calls)} acc." if calls else "none"))
    return rows


def _precision(built: Candidate | Measurement) -> str:
    """How much of another tool's model runs in INT8: the weighted operators whose weight is
    dequantized (QDQ), out of all of them."""
    if not isinstance(built, Candidate):
        return ""
    graph = onnx.load(str(built.model), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    int8 = sum(1 for n in weighted if len(n.input) > 1 and n.input[1] in dequantized)
    dynamic = sum(1 for n in graph.node if n.op_type in ("MatMulInteger", "ConvInteger",
                                                          "DynamicQuantizeLinear"))
    if dynamic:
        return f"dynamic INT8 ({dynamic} integer operators)"
    return f"INT8 QDQ: {int8} of {len(weighted)} Conv/Gemm/MatMul"


def _transformer(model: onnx.ModelProto) -> bool:
    """What a user would tell NNCF: attention (Softmax) and no convolutions."""
    ops = {n.op_type for n in model.graph.node}
    return "Softmax" in ops and "Conv" not in ops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--search-space", default="cpu-int8")
    p.add_argument("--budget", type=int, default=16, help="timed measurements per strategy")
    p.add_argument("--max-accuracy-drop", type=float, default=LIMIT)
    p.add_argument("--out", type=Path, help="keep each strategy's run directory here and "
                   "write the report: trials.csv, peers.csv (every row above), tables, plots")
    args = p.parse_args()
    found = providers.available()
    print(f"{machine()['cpu']}, {machine()['cores']} cores, onnxruntime {onnxruntime.__version__}; "
          f"limit {args.max_accuracy_drop}; {args.search_space}, budget {args.budget} per strategy")
    if not found["openvino"].ok:
        print(f"(no '{OPENVINO}' row: {found['openvino'].how})")
    objective = Objective(max_accuracy_drop=args.max_accuracy_drop)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.out or Path(tmp)
        for ref in args.models:
            w = load(ref)
            model_tmp = Path(tmp) / ref.replace(":", "-")
            model_tmp.mkdir()
            m = Measurer(w, FINAL)
            rows = [Row("ORT_ENABLE_ALL", Plan(), None, "")]
            rows += ort_by_hand(m, model_tmp)
            rows += nncf_rows(w, args.max_accuracy_drop, model_tmp)
            if found["openvino"].ok:
                rows.append(Row(OPENVINO, _HAND.plan({"execution_provider": "openvino",
                                                      **Presets.PER_PROVIDER[0]}), None, "none"))
            for strategy in args.strategies:
                start = time.perf_counter()
                run = tune(w, space.load(args.search_space), strategy=strategy,
                           budget=args.budget, objective=objective, quiet=True,
                           cache=Cache(model_tmp / f"{strategy}.sqlite"),
                           out=runs / ref.replace(":", "-") / strategy)
                rows.append(Row(f"autotune {strategy}", run.best.plan if run.best else Plan(),
                                time.perf_counter() - start,
                                f"{run.measurements_used} timed + {run.accuracy_evaluations} acc."))
            split = "holdout" if w.data.holdout else "eval"
            timed = [r for r in rows if not isinstance(r.built, Measurement)]
            final = dict(zip((r.tool for r in timed), m.compare([r.built for r in timed], split)))
            base = final["ORT_ENABLE_ALL"]
            if not base.ok:
                print(f"\n{ref}: the final run failed: {base.reason}", flush=True)
                continue
            what = label(w.metric.name)
            print(f"\n{ref}: {what}, limit {args.max_accuracy_drop}, on "
                  f"{getattr(w.data, split if split == 'holdout' else 'evaluation')} {split} "
                  f"samples (ORT_ENABLE_ALL {base.latency_ms:.2f} ms in the final run)")
            print(f"  {'tool':30s} {'speedup [95% CI]':>24s} {what:>14s} {'drop':>8s} ok "
                  f"{'wall s':>7s}  {'evaluations':20s} plan")
            for r in rows:
                got = final.get(r.tool, r.built)
                row = _line(ref, w, r, got, base, objective)
                print(_show(row), flush=True)
                if r.tool != "ORT_ENABLE_ALL":  # the baseline, 1.000x by definition
                    table.append(row)
    if args.out:
        trials = []
        for ref in args.models:
            for strategy in args.strategies:
                cell = f"{ref.replace(':', '-')}/{strategy}"
                trials += report.run_rows(args.out.name, args.out / cell, strategy, cell)
        report.write_csv(trials, args.out / "trials.csv")
        report.write_csv(table, args.out / report.PEERS, report.PEER_COLUMNS)
        print(f"\nwrote {report.report(args.out / 'trials.csv')}: the strategies' trials and "
              f"the peers in autotune report's tables and plots")


def _line(ref, w, r: Row, m: Measurement, base: Measurement, objective: Objective) -> dict:
    """One row of the table (and of peers.csv, see autotune.report.PEER_COLUMNS)."""
    row = {"workload": w.name, "model": ref, "tool": r.tool, "status": m.status,
           "reason": m.reason, "metric": w.metric.name,
           "max_accuracy_drop": objective.max_accuracy_drop,
           "seconds": None if r.seconds is None else round(r.seconds, 1),
           "evaluations": r.cost, "cpu": machine()["cpu"], "onnxruntime": onnxruntime.__version__,
           "plan": r.what or (r.built.describe() if isinstance(r.built, Plan)
                              else _precision(r.built))}
    if m.ok:
        drop = Objective.accuracy_drop(m, base)
        row.update(speedup=m.speedup, speedup_lo=m.speedup_ci[0], speedup_hi=m.speedup_ci[1],
                   accuracy_drop=drop, within_limit=objective.within_limit(drop),
                   score=m.output_error if w.metric.name == "fidelity" else m.accuracy)
    return row


def _show(row: dict) -> str:
    if row["status"] != "ok":
        return f"  {row['tool']:30s} failed: {row['reason']}"
    seconds = "" if row["seconds"] is None else f"{row['seconds']:7.0f}"
    return (f"  {row['tool']:30s} {row['speedup']:7.3f}x [{row['speedup_lo']:.3f}, "
            f"{row['speedup_hi']:.3f}] {row['score']:14.4f} {row['accuracy_drop']:8.4f} "
            f"{'yes' if row['within_limit'] else 'NO ':3s}{seconds:>7s}  {row['evaluations']:20s} "
            f"{row['plan']}")


if __name__ == "__main__":
    main()
