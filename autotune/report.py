"""Research tables from runs: every trial as one CSV, and the tables, plots and replay files
built from that CSV alone, so that the committed CSV regenerates them byte for byte.

`autotune report SOURCE` takes an experiment directory (`autotune experiment run`), a run
directory (`autotune tune`), or a report directory or CSV written before, and writes into
`results/<name>/`:

- `trials.csv`: one row per trial, the baseline of each cell included;
- `table.md`, `table.tex`: a row per strategy; per workload the best speedup over
  ORT_ENABLE_ALL within the accuracy limit (mean and 95% t-interval over seeds), the
  evaluations a seed needed to get within 5% of its final gain, and the accuracy and peak
  memory of the best plans against the baseline;
- `provenance.md` and `replay/*.json`: which trial every seed's best is, with its model hash,
  plan, versions and machine; `autotune replay replay/X.json --validate` measures it again;
- `best-so-far.png/.svg` and `pareto.png/.svg`.

A `peers.csv` in the source (written by `benchmarks/peers.py`: other tools timed beside the
strategies in one interleaved run) is kept in the report; the tables show it "side by side"
under each workload, and the Pareto plot marks each tool.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import UsageError
from autotune.metrics import label as metric_label

COLUMNS = ("experiment", "workload", "strategy", "algorithm", "seed", "cell", "trial",
           "evaluation", "status", "reason", "cached", "exportable", "verdict", "score",
           "speedup", "speedup_lo", "speedup_hi", "latency_ms", "baseline_ms",
           "peak_memory_mb", "baseline_peak_memory_mb", "model_size_mb", "metric", "accuracy",
           "baseline_accuracy", "output_error", "accuracy_drop", "seconds", "plan_summary",
           "plan_digest", "plan", "workload_digest", "workload_spec", "search_space", "budget",
           "max_accuracy_drop", "objective", "host", "cpu", "onnxruntime", "code", "python",
           "kind")
# Columns added later, with the value rows of older reports have: kind is "timing" or
# "accuracy" (an accuracy evaluation, built and scored but not timed).
LATER = {"kind": "timing"}
FLOATS = ("score", "speedup", "speedup_lo", "speedup_hi", "latency_ms", "baseline_ms",
          "peak_memory_mb", "baseline_peak_memory_mb", "model_size_mb", "accuracy",
          "baseline_accuracy", "output_error", "accuracy_drop", "seconds", "max_accuracy_drop")
INTS = ("seed", "trial", "evaluation", "budget")
BOOLS = ("cached", "exportable", "within_limit")
# peers.csv: other tools (ORT's quantizer by hand, NNCF, a provider's defaults) measured beside
# the strategies by benchmarks/peers.py, one row per tool and workload from one interleaved
# timing against the baseline; the report shows them beside the strategies.
PEERS = "peers.csv"
PEER_COLUMNS = ("workload", "model", "tool", "status", "reason", "speedup", "speedup_lo",
                "speedup_hi", "metric", "score", "accuracy_drop", "max_accuracy_drop",
                "within_limit", "seconds", "evaluations", "plan", "cpu", "onnxruntime")
NEAR = 0.95  # "evaluations to get within 5% of the final gain"


# -- collecting trials into rows ------------------------------------------------------------


def collect(source: Path) -> tuple[str, list[dict[str, Any]]]:
    """(name, rows) of an experiment directory or a run directory."""
    source = Path(source)
    if (source / "experiment.json").is_file():
        info = json.loads((source / "experiment.json").read_text())
        from autotune.experiment import finished

        runs = []
        for w in info["workloads"]:
            for s in info["strategies"]:
                for d in sorted((source / "cells" / w / s["label"]).glob("seed-*"),
                                key=lambda p: int(p.name.split("-")[1])):
                    if finished(d):
                        runs.append((d, s["label"], d.relative_to(source).as_posix()))
        if not runs:
            raise UsageError(f"{source}: no finished cell yet; run `autotune experiment run` "
                             f"first")
        name = info["name"]
    elif (source / "run.json").is_file():
        name = source.resolve().name
        runs = [(source, None, ".")]
    else:
        raise UsageError(f"{source} is neither an experiment directory (experiment.json), a run "
                         f"directory (run.json) nor a report (trials.csv)")
    rows = []
    for d, label, cell in runs:
        rows += run_rows(name, d, label, cell)
    return name, rows


def run_rows(name: str, run: Path, label: str | None, cell: str) -> list[dict[str, Any]]:
    """The rows of one run directory (a cell of an experiment), its baseline first."""
    from autotune.objective import Objective
    from autotune.store import RunStore

    store = RunStore(run)
    info = store.run_info()
    trials = store.trials()
    base = next((t for t in trials if t.is_baseline), None)
    if base is None:
        return []
    b = base.measurement
    strategy = label or info["strategy"]["name"]
    rows = []
    evaluation = 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.is_baseline and t is not base:
            continue  # a resumed run's second look at its baseline
        m = t.measurement
        if not t.is_baseline and m.timed:
            evaluation += 1
        prov = m.provenance or {}
        drop = 0.0 if t.is_baseline else (Objective.accuracy_drop(m, b) if m.ok else None)
        lo, hi = m.speedup_ci or (None, None)
        rows.append({
            "experiment": name, "workload": info["workload"]["name"], "strategy": strategy,
            "algorithm": info["strategy"]["name"], "seed": info["seed"], "cell": cell,
            "trial": t.number, "kind": "timing" if m.timed else "accuracy",
            "evaluation": 0 if t.is_baseline else evaluation if m.timed else None,
            "status": "baseline" if t.is_baseline else m.status, "reason": m.reason,
            "cached": m.cached, "exportable": t.exportable, "verdict": t.verdict,
            "score": t.score, "speedup": 1.0 if t.is_baseline else m.speedup,
            "speedup_lo": lo, "speedup_hi": hi, "latency_ms": m.latency_ms,
            "baseline_ms": m.baseline_ms, "peak_memory_mb": m.peak_memory_mb,
            "baseline_peak_memory_mb": b.peak_memory_mb, "model_size_mb": m.model_size_mb,
            "metric": m.metric or b.metric, "accuracy": m.accuracy,
            "baseline_accuracy": b.accuracy, "output_error": m.output_error,
            "accuracy_drop": drop, "seconds": m.seconds, "plan_summary": t.plan.describe(),
            "plan_digest": t.plan.digest(), "plan": json.dumps(t.plan.to_dict(), sort_keys=True),
            "workload_digest": info["workload_digest"],
            "workload_spec": json.dumps(info["workload"], sort_keys=True),
            "search_space": info["search_space"], "budget": info["budget"],
            "max_accuracy_drop": info["objective"]["max_accuracy_drop"],
            "objective": info["objective"]["target"], "host": t.host,
            "cpu": (prov.get("machine") or {}).get("cpu"),
            "onnxruntime": prov.get("onnxruntime"), "code": prov.get("code"),
            "python": prov.get("python")})
    return rows


# -- the CSV ------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in columns})
    Path(path).write_text(buf.getvalue())


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def read_csv(path: Path, columns: tuple[str, ...] = COLUMNS) -> list[dict[str, Any]]:
    """The rows of a trials.csv (or, given PEER_COLUMNS, a peers.csv), typed; what `write_csv`
    wrote comes back equal."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or ()) and c not in LATER]
    if missing:
        raise UsageError(f"{path} is not a {Path(path).name} of `autotune report` (no column "
                         f"`{missing[0]}`)")
    rows = []
    for r in reader:
        row: dict[str, Any] = {**LATER, **{k: (v if v != "" else None) for k, v in r.items()}}
        for k in FLOATS:
            if k in row:
                row[k] = float(row[k]) if row[k] is not None else None
        for k in INTS:
            if k in row:
                row[k] = int(row[k]) if row[k] is not None else None
        for k in BOOLS:
            if k in row:
                row[k] = row[k] == "true"
        rows.append(row)
    return rows


# -- summaries ----------------------------------------------------------------------------


@dataclass
class Seed:
    """One cell: a strategy's run on a workload with one seed."""

    baseline: dict[str, Any]
    trials: list[dict[str, Any]]  # timings, by evaluation
    screened: int = 0  # accuracy evaluations (not timed) measured anew

    def best(self) -> dict[str, Any] | None:
        """The best exportable trial (highest score), or None: the baseline is the answer."""
        ok = [t for t in self.trials if t["exportable"] and t["score"] is not None]
        return max(ok, key=lambda t: (t["score"], -t["evaluation"]), default=None)

    def best_speedup(self) -> float:
        best = self.best()
        return best["speedup"] if best else 1.0

    def curve(self, n: int) -> list[float]:
        """The best speedup within the limit after each of the first n evaluations."""
        out, best = [], 1.0
        for i in range(n):
            t = self.trials[i] if i < len(self.trials) else None
            if t is not None and t["exportable"] and t["score"] is not None:
                best = max(best, t["speedup"])
            out.append(best)
        return out

    def evaluations_to_near_best(self) -> int:
        """Evaluations until the best so far is within 5% of the final gain (log speedup); 0
        when nothing beat the baseline."""
        final = math.log(self.best_speedup())
        if final <= 0:
            return 0
        for i, value in enumerate(self.curve(len(self.trials)), start=1):
            if math.log(value) >= NEAR * final:
                return i
        return len(self.trials)


def group(rows: list[dict[str, Any]]):
    """{workload: {strategy: {seed: Seed}}}, in the order of the CSV."""
    out: dict[str, dict[str, dict[int, Seed]]] = {}
    for r in rows:
        cell = out.setdefault(r["workload"], {}).setdefault(r["strategy"], {})
        s = cell.get(r["seed"])
        if s is None:
            if r["status"] != "baseline":
                raise UsageError(f"trials.csv: {r['cell']} has trials before its baseline row")
            cell[r["seed"]] = Seed(r, [])
        elif r["kind"] == "accuracy":
            s.screened += not r["cached"]
        else:
            s.trials.append(r)
    return out


def interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% t-interval; no interval from one value."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    sem = float(stats.sem(values))
    if sem == 0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return mean, mean - half, mean + half


def strategies_of(grouped) -> list[str]:
    seen: dict[str, None] = {}
    for per in grouped.values():
        seen.update(dict.fromkeys(per))
    return list(seen)


@dataclass
class Summary:
    speedup: tuple[float, float | None, float | None]
    evaluations: float | None  # median over the seeds that beat the baseline; None if none did
    beat: int  # seeds whose best beat the baseline
    accuracy: float | None  # mean change: top-1 points (+ better), or the output error
    memory: float | None  # mean peak-memory change, fraction (- is less)
    metric: str
    seeds: int
    screened: float = 0.0  # median accuracy evaluations (not timed) per seed


def summarize(seeds: dict[int, Seed]) -> Summary:
    bests = [s.best() for s in seeds.values()]
    metric = next(iter(seeds.values())).baseline["metric"] or "top1"
    acc, mem = [], []
    for s, b in zip(seeds.values(), bests):
        if b is None:
            acc.append(0.0)
            mem.append(0.0)
            continue
        if b["accuracy_drop"] is not None:
            acc.append(b["accuracy_drop"] if metric == "fidelity" else -b["accuracy_drop"])
        if b["peak_memory_mb"] and b["baseline_peak_memory_mb"]:
            mem.append(b["peak_memory_mb"] / b["baseline_peak_memory_mb"] - 1)
    found = [s.evaluations_to_near_best() for s, b in zip(seeds.values(), bests) if b is not None]
    return Summary(interval([s.best_speedup() for s in seeds.values()]),
                   float(np.median(found)) if found else None, len(found),
                   float(np.mean(acc)) if acc else None, float(np.mean(mem)) if mem else None,
                   metric, len(seeds), float(np.median([s.screened for s in seeds.values()])))


def _evals_text(s: Summary, latex: bool = False) -> str:
    text = ("--" if latex else "-") if s.evaluations is None else f"{s.evaluations:g}"
    return text + (f" +{s.screened:g} acc." if s.screened else "")


# -- tables -------------------------------------------------------------------------------


def _speedup_text(s: Summary) -> str:
    mean, lo, hi = s.speedup
    return f"{mean:.3f}" if lo is None else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _accuracy_text(metric: str, change: float | None, latex: bool = False) -> str:
    if change is None:
        return "n/a"
    if metric == "fidelity":
        return f"err {change:.4f}"
    sign = "$-$" if latex and change < 0 else ("-" if change < 0 else "+")
    return f"{sign}{abs(change) * 100:.2f} pt"


def _memory_text(s: Summary, latex: bool = False) -> str:
    if s.memory is None:
        return "n/a"
    pct = "\\%" if latex else "%"
    sign = ("$-$" if latex else "-") if s.memory < 0 else "+"
    return f"{sign}{abs(s.memory) * 100:.1f}{pct}"


def _peer_cells(p: dict[str, Any], latex: bool = False) -> list[str]:
    """A side-by-side row's speedup, accuracy, evaluations and wall-time cells."""
    dash = "--" if latex else "-"
    if p["status"] != "ok":
        return ["failed", dash, p["evaluations"] or dash, dash]
    change = p["accuracy_drop"] if p["metric"] == "fidelity" else -p["accuracy_drop"]
    over = "" if p["within_limit"] else " (over the limit)"
    seconds = dash if p["seconds"] is None else f"{p['seconds']:.0f}"
    return [f"{p['speedup']:.3f} [{p['speedup_lo']:.3f}, {p['speedup_hi']:.3f}]",
            _accuracy_text(p["metric"], change, latex) + over, p["evaluations"] or dash, seconds]


def _legend(rows: list[dict[str, Any]], peers: list[dict[str, Any]] = ()) -> str:
    r = rows[0]
    budget = r["budget"]
    screened = (", and (+N acc.) the median accuracy evaluations per seed (built and scored, "
                "not timed)" if any(x["kind"] == "accuracy" for x in rows) else "")
    return (f"Best speedup over ORT_ENABLE_ALL within the accuracy limit "
            f"({r['max_accuracy_drop']:g}), mean and 95% t-interval over seeds (1.000: the "
            f"baseline, nothing qualified); beat: the seeds whose best beat the baseline; "
            f"evals: of those, the median evaluations until the best was within 5% of its final "
            f"gain (log speedup){screened}; accuracy "
            f"(top-1 points, or the output error for fidelity workloads) and peak memory of the "
            f"best plans against the baseline. Search space {r['search_space']}, {budget} real "
            f"measurements per run (cache hits are free); a strategy that draws no random "
            f"numbers runs one seed." + (_PEERS_LEGEND if peers else ""))


_PEERS_LEGEND = (" Side by side: other tools and each strategy's best, from benchmarks/peers.py, "
                 "timed together against the baseline in one interleaved run on held-out data "
                 "(the interval is that run's 95% CI, not one over seeds); evals: what the tool "
                 "spent (accuracy evaluations, timings); s: its wall time.")


def markdown(rows: list[dict[str, Any]], peers: list[dict[str, Any]] = ()) -> str:
    grouped = group(rows)
    names = strategies_of(grouped)
    out = [f"# {rows[0]['experiment']}", "", _legend(rows, peers), ""]
    for w, per in grouped.items():
        metric = next(iter(next(iter(per.values())).values())).baseline["metric"]
        out += [f"## {w} ({'fidelity' if metric == 'fidelity' else metric_label(metric)})", "",
                "| strategy | seeds | speedup | beat | evals | accuracy | peak memory |",
                "|---|---:|---|---:|---:|---:|---:|"]
        for name in names:
            if name not in per:
                continue
            s = summarize(per[name])
            out.append(f"| {name} | {s.seeds} | {_speedup_text(s)} | {s.beat}/{s.seeds} | "
                       f"{_evals_text(s)} | {_accuracy_text(s.metric, s.accuracy)} | "
                       f"{_memory_text(s)} |")
        out.append("")
        side = [p for p in peers if p["workload"] == w]
        if side:
            out += ["Side by side:", "", "| tool | speedup [95% CI] | accuracy | evals | s | what |",
                    "|---|---|---:|---:|---:|---|"]
            out += [f"| {p['tool']} | " + " | ".join(_peer_cells(p)) + f" | {p['plan']} |"
                    for p in side]
            out.append("")
    return "\n".join(out)


def latex(rows: list[dict[str, Any]], peers: list[dict[str, Any]] = ()) -> str:
    grouped = group(rows)
    names = strategies_of(grouped)
    workloads = list(grouped)
    cols = "l" + "rrrr" * len(workloads)
    head = " & ".join(f"\\multicolumn{{4}}{{c}}{{{_tex(w)}}}" for w in workloads)
    sub = " & ".join(["speedup & evals & acc. & mem."] * len(workloads))
    rules = " ".join(f"\\cmidrule(lr){{{2 + 4 * i}-{5 + 4 * i}}}" for i in range(len(workloads)))
    lines = ["% " + _legend(rows, peers), "% needs \\usepackage{booktabs}",
             f"\\begin{{tabular}}{{{cols}}}", "\\toprule", f" & {head} \\\\", rules,
             f"strategy & {sub} \\\\", "\\midrule"]
    for name in names:
        cells = []
        for w in workloads:
            if name not in grouped[w]:
                cells += ["--"] * 4
                continue
            s = summarize(grouped[w][name])
            mean, lo, hi = s.speedup
            sp = f"{mean:.3f}" if lo is None else f"{mean:.3f} [{lo:.2f}, {hi:.2f}]"
            cells += [sp, _evals_text(s, True), _accuracy_text(s.metric, s.accuracy, True),
                      _memory_text(s, True)]
        lines.append(f"{_tex(name)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    if peers:
        lines += ["% side by side (benchmarks/peers.py): one interleaved run on held-out data",
                  "\\begin{tabular}{llrrrr}", "\\toprule",
                  "workload & tool & speedup & accuracy & evals & s \\\\", "\\midrule"]
        lines += [f"{_tex(p['workload'])} & {_tex(p['tool'])} & "
                  + " & ".join(_tex(c) for c in _peer_cells(p, True)) + " \\\\" for p in peers]
        lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _tex(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


# -- provenance ---------------------------------------------------------------------------


def replay_name(r: dict[str, Any]) -> str:
    return f"{r['workload']}--{r['strategy']}--seed{r['seed']}.json"


def provenance(rows: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """provenance.md and the replay files (name -> text) of every seed's best trial."""
    grouped = group(rows)
    out = [f"# {rows[0]['experiment']}: where every number comes from", "",
           "Each seed's best trial (the one the table's speedup is from). `autotune replay "
           "replay/FILE --validate` rebuilds its plan from the original model and measures it "
           "again.", "",
           "| workload | strategy | seed | speedup [95% CI] | trial | plan | model hash | ORT | "
           "code | machine | replay |", "|---|---|---:|---|---|---|---|---|---|---|---|"]
    files = {}
    for w, per in grouped.items():
        for name, seeds in per.items():
            for seed, s in seeds.items():
                b = s.best()
                if b is None:
                    out.append(f"| {w} | {name} | {seed} | 1.000 (baseline) | "
                               f"{s.baseline['cell']} | nothing beat the baseline | "
                               f"{s.baseline['workload_digest']} | "
                               f"{s.baseline['onnxruntime']} | {s.baseline['code']} | "
                               f"{s.baseline['cpu']} | |")
                    continue
                file = replay_name(b)
                files[file] = json.dumps({
                    "workload": json.loads(b["workload_spec"]),
                    "workload_digest": b["workload_digest"], "plan": json.loads(b["plan"]),
                    "measured": {"speedup": b["speedup"],
                                 "speedup_ci": [b["speedup_lo"], b["speedup_hi"]],
                                 "accuracy_drop": b["accuracy_drop"],
                                 "peak_memory_mb": b["peak_memory_mb"]},
                    "max_accuracy_drop": b["max_accuracy_drop"],
                    "source": {"experiment": b["experiment"], "cell": b["cell"],
                               "trial": b["trial"], "host": b["host"], "cpu": b["cpu"],
                               "onnxruntime": b["onnxruntime"], "code": b["code"],
                               "python": b["python"]}}, indent=2) + "\n"
                out.append(f"| {w} | {name} | {seed} | {b['speedup']:.3f} "
                           f"[{b['speedup_lo']:.3f}, {b['speedup_hi']:.3f}] | "
                           f"{b['cell']} #{b['trial']} | {b['plan_summary']} | "
                           f"{b['workload_digest']} | {b['onnxruntime']} | {b['code']} | "
                           f"{b['cpu']} | replay/{file} |")
    return "\n".join(out) + "\n", files


# -- plots --------------------------------------------------------------------------------


def plots(rows: list[dict[str, Any]], out: Path, peers: list[dict[str, Any]] = ()) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "onnx-autotune"  # stable SVG ids
    grouped = group(rows)
    names = strategies_of(grouped)
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    written = []
    n = len(grouped)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (w, per) in zip(axes[0], grouped.items()):
        for name in names:
            if name not in per:
                continue
            length = max(len(s.trials) for s in per[name].values())
            if length == 0:
                continue
            curves = np.array([s.curve(length) for s in per[name].values()])
            x = np.arange(1, length + 1)
            mean = curves.mean(axis=0)
            ax.plot(x, mean, color=colors[name], label=name, drawstyle="steps-post")
            if len(curves) > 1:
                from scipy import stats

                half = stats.t.ppf(0.975, len(curves) - 1) * stats.sem(curves, axis=0)
                ax.fill_between(x, mean - half, mean + half, color=colors[name], alpha=0.08,
                                step="post", linewidth=0)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(w)
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best speedup so far (x ORT_ENABLE_ALL)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Best speedup over ORT_ENABLE_ALL within the accuracy limit, against "
                 "evaluations (mean over seeds, 95% CI band)", fontsize=10)
    fig.tight_layout()
    written += _save(fig, out / "best-so-far")

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (w, per) in zip(axes[0], grouped.items()):
        points = [(t["accuracy_drop"], t["speedup"], _mem(t), name)
                  for name, seeds in per.items() for s in seeds.values() for t in s.trials
                  if t["status"] == "ok" and t["accuracy_drop"] is not None
                  and t["speedup"] is not None]
        if not points:
            ax.set_title(f"{w}: no measured trial")
            continue
        drops = np.array([p[0] for p in points])
        speed = np.array([p[1] for p in points])
        mem = np.array([p[2] for p in points])
        sc = ax.scatter(drops, speed, c=mem, cmap="viridis", s=14, alpha=0.7,
                        vmin=min(-0.5, float(np.nanmin(mem))), vmax=max(0.1, float(np.nanmax(mem))))
        flat = _front([(p[0], p[1], 0.0) for p in points])  # speedup against accuracy alone
        ax.plot([p[0] for p in flat], [p[1] for p in flat], color="crimson", linewidth=1.2,
                drawstyle="steps-post", label="front: speedup, accuracy")
        full = _front(points)
        ax.scatter([p[0] for p in full], [p[1] for p in full], s=30, facecolors="none",
                   edgecolors="crimson", linewidths=1.0, label="front: + peak memory")
        for p in peers:
            if p["workload"] == w and p["status"] == "ok":
                ax.scatter([p["accuracy_drop"]], [p["speedup"]], marker="x", color="black", s=28)
                ax.annotate(p["tool"], (p["accuracy_drop"], p["speedup"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        base = next(iter(next(iter(per.values())).values())).baseline
        ax.axvline(base["max_accuracy_drop"], color="grey", linestyle="--", linewidth=0.8,
                   label="accuracy limit")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        metric = base["metric"]
        ax.set_xlabel("output error" if metric == "fidelity" else
                      f"{metric_label(metric)} loss (fraction)")
        ax.set_title(w)
        ax.grid(alpha=0.3)
        fig.colorbar(sc, ax=ax, label="peak memory change (fraction)")
    axes[0][0].set_ylabel("speedup (x ORT_ENABLE_ALL)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Speedup against accuracy loss, every measured trial (colour: peak memory), "
                 "with the Pareto fronts" + ("; x: peers" if peers else ""), fontsize=10)
    fig.tight_layout()
    written += _save(fig, out / "pareto")
    plt.close("all")
    return written


def _mem(t: dict[str, Any]) -> float:
    if t["peak_memory_mb"] and t["baseline_peak_memory_mb"]:
        return t["peak_memory_mb"] / t["baseline_peak_memory_mb"] - 1
    return float("nan")


def _front(points: list[tuple]) -> list[tuple]:
    """The points no other beats in speedup, accuracy drop and memory at once, by drop."""
    def beats(a, b):
        better = (a[1] >= b[1], a[0] <= b[0], not (a[2] > b[2]))
        return all(better) and (a[1], a[0], a[2]) != (b[1], b[0], b[2])

    kept = [p for p in points if not any(beats(q, p) for q in points)]
    return sorted(set((p[0], p[1], p[2]) for p in kept))


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths


# -- the command ----------------------------------------------------------------------------


def report(source: Path, out: Path | None = None, plot: bool = True) -> Path:
    """Writes the report of `source` (see the module's docstring); returns its directory."""
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        csv_path = source
    elif (source / "trials.csv").is_file() and not (source / "experiment.json").is_file() \
            and not (source / "run.json").is_file():
        csv_path = source / "trials.csv"
    else:
        if not source.exists():
            raise UsageError(f"{source} does not exist")
        name, rows = collect(source)
        out = Path(out) if out else Path("results") / name
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out / "trials.csv")
        csv_path = out / "trials.csv"
    rows = read_csv(csv_path)  # everything below comes from the CSV alone
    if not rows:
        raise UsageError(f"{csv_path} holds no trials")
    out = Path(out) if out else csv_path.parent
    out.mkdir(parents=True, exist_ok=True)
    if csv_path.resolve() != (out / "trials.csv").resolve():
        write_csv(rows, out / "trials.csv")
    peers = _peers(source if source.is_dir() else csv_path.parent, out)
    (out / "table.md").write_text(markdown(rows, peers))
    (out / "table.tex").write_text(latex(rows, peers))
    text, files = provenance(rows)
    (out / "provenance.md").write_text(text)
    replay_dir = out / "replay"
    replay_dir.mkdir(exist_ok=True)
    for old in replay_dir.glob("*.json"):
        if old.name not in files:
            old.unlink()
    for file, body in files.items():
        (replay_dir / file).write_text(body)
    if plot:
        plots(rows, out, peers)
    return out


def _peers(source: Path, out: Path) -> list[dict[str, Any]]:
    """The peers.csv of the source (kept in the report too), or none."""
    if not (source / PEERS).is_file():
        return []
    peers = read_csv(source / PEERS, PEER_COLUMNS)
    if (source / PEERS).resolve() != (out / PEERS).resolve():
        write_csv(peers, out / PEERS, PEER_COLUMNS)
    return peers
