"""The worker process: `python -m autotune.worker build|measure SPEC.json RESULT.json`.

Runs in a fresh process per candidate so that a crash or leak in ONNX Runtime or its quantizer
costs one trial, not the tuner. It writes a JSON result; if it dies before that, the parent
reports how it died.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Both sessions of an interleaved comparison run with spinning off: an idle session's spinning
# threads would steal the cores of the one being timed (2x slower on a 2-core machine).
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}".rstrip(": ")


def build(spec: dict[str, Any]) -> dict[str, Any]:
    from autotune.plan import Plan, apply

    plan = Plan.from_dict(spec["plan"])
    out = Path(spec["out"]) / "candidate"
    shapes = {k: tuple(v) for k, v in spec.get("shapes", {}).items()}
    c = apply(plan, Path(spec["model"]), Path(spec["data"]), out, shapes)
    return {"status": "ok", "model": str(c.model), "settings": c.settings, "note": c.note}


def batches(data_file: str, split: str = "eval") -> tuple[list[dict[str, np.ndarray]],
                                                              np.ndarray | None]:
    """A split of the data (the evaluation split unless told) as one feed per batch, and its
    labels if the data has them."""
    from autotune.workload import label_key

    with np.load(data_file) as f:
        arrays = {k[len(split) + 1:]: f[k] for k in f.files if k.startswith(f"{split}:")}
        labels = f[label_key(split)] if label_key(split) in f.files else None
    if not arrays:
        raise ValueError(f"the data file has no {split} split")
    count = len(next(iter(arrays.values())))
    return [{n: a[i] for n, a in arrays.items()} for i in range(count)], labels


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux), so the peak counts from here on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_FAILED_AT = {"load": "model refused by ONNX Runtime", "baseline": "baseline failed",
              "run": "inference failed", "accuracy": "evaluation failed", "metric": "metric failed"}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from autotune.runtime import create_session
    from autotune.stats import median_ci, speedup_ci

    protocol = spec["protocol"]
    evaluation, labels = batches(spec["data"], spec.get("split", "eval"))

    before = _memory_kb("VmRSS")
    _reset_peak()
    stage = "load"
    try:
        t0 = time.perf_counter()
        cand = create_session(spec["model"], spec["settings"], NO_SPIN)
        session_seconds = time.perf_counter() - t0  # a provider may compile the model here
        stage = "run"
        feed = evaluation[0]
        cand.run(None, feed)
        peak_mb = max(_memory_kb("VmHWM") - before, 0) / 1024
        stage = "baseline"
        base = create_session(spec["baseline"], spec["baseline_settings"], NO_SPIN)
        base.run(None, feed)
        # Accuracy before timing: a candidate whose metric fails is known in seconds.
        stage = "accuracy"
        refs = _references(lambda: base, evaluation, spec.get("references"))
        outs = outputs(cand, evaluation)
        stage = "metric"
        accuracy, error = _accuracy(spec, outs, refs, evaluation, labels)
        extra = {}
        if spec.get("baseline_accuracy"):
            extra["baseline_accuracy"] = _accuracy(spec, refs, refs, evaluation, labels)[0]
        stage = "run"
        # Each alone first, seconds before they run side by side: references that show whether
        # one session slows the other (they share this process, and a provider's own threads
        # may keep cores busy after a run).
        short = {**protocol, "min_runs": 10, "min_seconds": min(0.5, protocol["min_seconds"] / 4),
                 "max_seconds": 2.0}
        alone = _interleave([base], feed, short)[0]
        cand_alone = _interleave([cand], feed, short)[0]
        c_times, b_times = _interleave([cand, base], feed, protocol)
    except Exception as exc:  # ORT raises its own types (InvalidGraph, Fail, NotImplemented, ...)
        return {"status": "failed", "reason": f"{_FAILED_AT[stage]}: {_reason(exc)}"}
    lat, lat_lo, lat_hi = median_ci(c_times)
    bl, bl_lo, bl_hi = median_ci(b_times)
    sp, sp_lo, sp_hi = speedup_ci(b_times, c_times)
    return {"status": "ok", "latency_ms": lat, "latency_ci": [lat_lo, lat_hi],
            "baseline_ms": bl, "baseline_ci": [bl_lo, bl_hi], "speedup": sp,
            "speedup_ci": [sp_lo, sp_hi], "baseline_alone_ms": float(np.median(alone)),
            "latency_alone_ms": float(np.median(cand_alone)), "session_seconds": session_seconds,
            "runs": len(c_times), "peak_memory_mb": peak_mb,
            "accuracy": accuracy, "output_error": error, "metric": spec["metric"]["name"],
            "higher_is_better": spec["metric"]["higher_is_better"], **extra}


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """A built candidate's score on the split, untimed: an accuracy evaluation."""
    from autotune.runtime import create_session

    evaluation, labels = batches(spec["data"], spec.get("split", "eval"))
    stage = "load"
    try:
        cand = create_session(spec["model"], spec["settings"])
        stage = "baseline"
        refs = _references(lambda: create_session(spec["baseline"], spec["baseline_settings"]),
                           evaluation, spec.get("references"))
        stage = "accuracy"
        outs = outputs(cand, evaluation)
        stage = "metric"
        accuracy, error = _accuracy(spec, outs, refs, evaluation, labels)
    except Exception as exc:
        return {"status": "failed", "reason": f"{_FAILED_AT[stage]}: {_reason(exc)}"}
    return {"status": "ok", "accuracy": accuracy, "output_error": error,
            "metric": spec["metric"]["name"], "higher_is_better": spec["metric"]["higher_is_better"]}


def _interleave(sessions, feed, protocol) -> list[np.ndarray]:
    """Times the sessions in turn, forwards then backwards (ABBA for two, ABCCBA for three),
    until the protocol is satisfied, so drift over the run hits each of them alike.

    After warm-up, each visit to a session is one run, or, for a model faster than
    `visit_seconds`, a few runs of which the first (the one that pays for the caches the other
    sessions took) is not kept. Sample i of every session comes from the same round."""
    clock = time.perf_counter
    slowest = 0.0
    for _ in range(protocol["warmup_runs"]):
        for session in sessions:
            t0 = clock()
            session.run(None, feed)
            slowest = max(slowest, clock() - t0)
    per_visit = int(max(1, min(protocol["max_visit_runs"], protocol["visit_seconds"] // max(slowest, 1e-6))))
    skip = 1 if per_visit > 1 else 0
    times: list[list[float]] = [[] for _ in sessions]
    start = clock()
    i = 0
    while True:
        order = range(len(sessions)) if i % 2 == 0 else range(len(sessions) - 1, -1, -1)
        for k in order:
            for j in range(skip + per_visit):
                t0 = clock()
                sessions[k].run(None, feed)
                if j >= skip:
                    times[k].append((clock() - t0) * 1000)
        i += 1
        elapsed = clock() - start
        if i >= protocol["max_runs"] or elapsed >= protocol["max_seconds"]:
            break
        if i >= protocol["min_runs"] and elapsed >= protocol["min_seconds"]:
            break
    return [np.array(t) for t in times]


def outputs(session, evaluation) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed))) for feed in evaluation]


def _metric(spec: dict[str, Any]):
    from autotune.metrics import Metric

    m = spec["metric"]
    return Metric(m["name"], m.get("options", {}), m.get("function"), m["higher_is_better"])


def _accuracy(spec: dict[str, Any], outs, refs, evaluation, labels) -> tuple[float | None,
                                                                            float | None]:
    """(the metric's score, the relative output error against the FP32 model). Fidelity's score
    is top-1 agreement beside the error, which is what it limits."""
    from autotune import metrics

    agreement, error = metrics.fidelity(outs, refs)
    metric = _metric(spec)
    if metric.name == "fidelity":
        return agreement, error
    return metric.score(outs, refs, evaluation, labels, Path(spec["baseline"])), error


def _references(baseline, evaluation, path: str | None) -> list[dict[str, np.ndarray]]:
    """The baseline's outputs on a split: from `path`, or computed with the session
    `baseline()` gives (and saved there whole, for the next measurement)."""
    if path and Path(path).is_file():
        with np.load(path) as f:
            names = json.loads(str(f["names"]))
            count = len({k.split(":")[0] for k in f.files if k != "names"})
            return [{name: f[f"{i}:{k}"] for k, name in enumerate(names)} for i in range(count)]
    base = baseline()
    names = [o.name for o in base.get_outputs()]
    refs = outputs(base, evaluation)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f"{Path(path).stem}.{os.getpid()}.partial.npz")
        np.savez(tmp, names=json.dumps(names), **{f"{i}:{k}": out[name] for i, out in enumerate(refs)
                                                  for k, name in enumerate(names)})
        tmp.replace(path)
    return refs


def check(spec: dict[str, Any]) -> dict[str, Any]:
    """Scores the unmodified model with the workload's metric (and keeps its outputs as the
    references): a metric that cannot score it is known before anything is built."""
    from autotune.runtime import create_session

    try:
        base = create_session(spec["baseline"], spec["baseline_settings"], NO_SPIN)
    except Exception as exc:
        return {"status": "failed", "reason": f"the model does not run on ONNX Runtime as given "
                f"({_reason(exc)}); check its operators and opset"}
    try:
        evaluation, labels = batches(spec["data"], spec.get("split", "eval"))
        refs = _references(lambda: base, evaluation, spec.get("references"))
    except Exception as exc:
        return {"status": "failed", "reason": f"the model does not run on its data "
                f"({_reason(exc)}); check the input shapes bound and the data"}
    try:
        score, _ = _accuracy(spec, refs, refs, evaluation, labels)
    except Exception as exc:
        return {"status": "failed", "metric": True, "reason": _reason(exc)}
    return {"status": "ok", "score": score}


def compare(spec: dict[str, Any]) -> dict[str, Any]:
    """Several built candidates in one interleaved run; the first is the reference (the
    ORT_ENABLE_ALL baseline) that ratios and accuracy are taken against."""
    from autotune.runtime import create_session
    from autotune.stats import median_ci, speedup_ci

    evaluation, labels = batches(spec["data"], spec.get("split", "eval"))
    feed = evaluation[0]
    # No peak memory here: sessions made one after another in one process share its heap; the
    # `measure` command, whose candidate is the first session of a fresh process, measures it.
    sessions = []
    try:
        for c in spec["candidates"]:
            sessions.append(create_session(c["model"], c["settings"], NO_SPIN))
            sessions[-1].run(None, feed)
        times = _interleave(sessions, feed, spec["protocol"])
        refs = outputs(sessions[0], evaluation)
        scores = [_accuracy(spec, outputs(s, evaluation), refs, evaluation, labels)
                  for s in sessions]
    except Exception as exc:
        return {"status": "failed", "reason": _reason(exc)}
    rows = []
    for t, (accuracy, error) in zip(times, scores):
        lat, lo, hi = median_ci(t)
        ratio, r_lo, r_hi = speedup_ci(times[0], t)
        rows.append({"latency_ms": lat, "latency_ci": [lo, hi], "speedup": ratio,
                     "speedup_ci": [r_lo, r_hi], "accuracy": accuracy,
                     "output_error": error, "runs": len(t)})
    return {"status": "ok", "rows": rows}


def _inject_fault() -> None:
    """Test hook: AUTOTUNE_WORKER_FAULT=crash|hang makes the worker fail the way ORT can."""
    fault = os.environ.get("AUTOTUNE_WORKER_FAULT")
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "hang":
        time.sleep(3600)


def main(argv: list[str]) -> int:
    command, spec_file, result_file = argv
    _inject_fault()
    spec = json.loads(Path(spec_file).read_text())
    try:
        result = {"build": build, "measure": measure, "evaluate": evaluate, "compare": compare,
                  "check": check}[command](spec)
    except Exception as exc:
        result = {"status": "failed", "reason": _reason(exc)}
    Path(result_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
