"""Measurements: every candidate is built and timed in fresh worker processes, against the
ORT_ENABLE_ALL baseline interleaved, and cached by content so nothing is measured twice.

A crash, hang, out-of-memory kill or refused graph in a worker becomes a failed Measurement
with its reason; the tuner goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autotune.errors import ModelError
from autotune.plan import Candidate, Plan, session_settings
from autotune.workload import Workload

# Accuracy evaluations (a build and one pass over the evaluation split, never timed) are cheap
# next to a careful timing: strategies that screen plans by accuracy get many by default.
ACCURACY_BUDGET = 100
# Bump when the worker's way of measuring changes, so old cached numbers are not reused.
MEASURE_VERSION = 3
# The code that builds and measures candidates: any change to it is a new cache key, so a
# cached number always comes from the candidate the current code would build.
_BUILD_CODE = ("plan.py", "quantize.py", "sites.py", "worker.py", "runtime.py", "providers.py",
               "metrics.py", "rewrites")


def code_digest() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _BUILD_CODE:
        for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Protocol:
    """How a candidate is timed. Part of the cache key."""

    warmup_runs: int = 5
    min_runs: int = 20  # interleaved rounds (candidate, baseline)
    max_runs: int = 400
    # A session runs this long per visit (several runs, the first not kept) when one run is
    # shorter: so that small models are timed with warm caches, as a serving loop runs them,
    # not just after the other session evicted them.
    visit_seconds: float = 0.02
    max_visit_runs: int = 16
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    build_timeout: float = 900.0
    measure_timeout: float = 900.0

    def digest(self) -> str:
        timing = {k: v for k, v in asdict(self).items() if not k.endswith("timeout")}
        return hashlib.sha256(json.dumps([timing, MEASURE_VERSION], sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Measurement:
    """What one candidate did. Latencies in ms; the speedup is over the baseline timed beside it."""

    status: str  # "ok" or "failed"
    reason: str | None = None
    latency_ms: float | None = None
    latency_ci: tuple[float, float] | None = None
    baseline_ms: float | None = None
    baseline_ci: tuple[float, float] | None = None
    baseline_alone_ms: float | None = None  # the baseline timed alone just before, same worker
    latency_alone_ms: float | None = None  # the candidate timed alone just before, same worker
    session_seconds: float | None = None  # creating the candidate's session (providers compile)
    speedup: float | None = None
    speedup_ci: tuple[float, float] | None = None
    runs: int = 0
    peak_memory_mb: float | None = None
    model_size_mb: float | None = None
    accuracy: float | None = None  # the metric's score (fidelity: top-1 agreement)
    output_error: float | None = None  # relative L2 error against the FP32 model (fidelity's score)
    metric: str | None = None
    higher_is_better: bool = True  # of `accuracy`
    baseline_accuracy: float | None = None  # only when asked for (verify)
    build_note: str | None = None
    transient: bool = False  # failed by timeout, crash or kill: may pass another time; not cached
    timed: bool = True  # False: an accuracy evaluation (built and scored, never timed)
    seconds: float = 0.0  # wall time spent building and measuring
    provenance: dict[str, Any] = field(default_factory=dict)
    cached: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        names = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if k.endswith("_ci") and v is not None else v)
             for k, v in d.items() if k in names}
        return cls(**d)

    @classmethod
    def failed(cls, reason: str, **kw: Any) -> Measurement:
        return cls(status="failed", reason=reason, **kw)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
            "host": platform.node()}


def fingerprint() -> str:
    """What makes timings comparable: the CPU, core count, ORT version (not the host name)."""
    import onnxruntime

    from autotune import providers

    m = machine()
    extra = providers.versions()
    return f"{m['cpu']}|{m['cores']}|{m['arch']}|ort{onnxruntime.__version__}" + (
        f"|{extra}" if extra else "")


class Cache:
    """Measurements in SQLite, keyed by model, plan, workload, ORT version, machine and protocol."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS measurements "
                       "(key TEXT PRIMARY KEY, measurement TEXT NOT NULL, created REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, key: str) -> Measurement | None:
        with self._connect() as db:
            row = db.execute("SELECT measurement FROM measurements WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        m = Measurement.from_dict(json.loads(row[0]))
        return Measurement(**{**{f.name: getattr(m, f.name) for f in fields(m)}, "cached": True})

    def put(self, key: str, m: Measurement) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?)",
                       (key, json.dumps(m.to_dict()), time.time()))


def _signal_reason(code: int) -> str:
    sig = -code
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGKILL:
        return f"killed by {name} (out of memory?)"
    return f"crashed with {name}"


class Measurer:
    """Builds and measures Plans of one workload, each in fresh worker processes."""

    def __init__(self, workload: Workload, protocol: Protocol = Protocol(),
                 cache: Cache | None = None) -> None:
        self.workload = workload
        self.protocol = protocol
        self.cache = cache
        self._data_file = workload.data_file()

    def key(self, plan: Plan) -> str:
        parts = [self.workload.digest(), plan.digest(), fingerprint(), self.protocol.digest(),
                 code_digest()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def measure(self, plan: Plan) -> Measurement:
        """The plan's Measurement, from the cache when this exact candidate was measured before."""
        return self._cached(plan, [self.key(plan)], lambda built, tmp: self._measure(
            built.model, built.settings, tmp, build_note=built.note))

    def evaluate(self, plan: Plan) -> Measurement:
        """The plan's accuracy alone: built and scored on the evaluation split in a worker, not
        timed (`timed` False, no latency). Deterministic, so cached like a timing; a timing of
        the same candidate, which holds its accuracy too, answers it as well."""
        return self._cached(plan, [self.key(plan), self._accuracy_key(plan)], self._evaluate,
                            timed=False)

    def _cached(self, plan: Plan, keys: list[str], run, timed: bool = True) -> Measurement:
        """The first of `keys` the cache holds, else the plan built and `run(candidate, tmp)`,
        with its wall time and provenance, cached under the last key."""
        if self.cache is not None:
            for key in keys:
                if (hit := self.cache.get(key)) is not None:
                    return hit
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="autotune-") as tmp:
            built = self.build(plan, Path(tmp))
            m = built if isinstance(built, Measurement) else run(built, Path(tmp))
        m = Measurement(**{**{f.name: getattr(m, f.name) for f in fields(m)}, "timed": timed,
                           "seconds": time.perf_counter() - start,
                           "provenance": self._provenance()})
        if self.cache is not None and not m.transient:
            self.cache.put(keys[-1], m)
        return m

    def _evaluate(self, built: Candidate, tmp: Path) -> Measurement:
        spec = {**self._spec(), "model": str(built.model.resolve()), "settings": built.settings}
        result = self._run("evaluate", spec, tmp, self.protocol.measure_timeout)
        if result.get("status") != "ok":
            return Measurement.failed(result["reason"], build_note=built.note,
                                      transient=result.get("transient", False))
        result.pop("status")
        return Measurement(status="ok", build_note=built.note,
                           model_size_mb=built.model.stat().st_size / 2**20, **result)

    def _accuracy_key(self, plan: Plan) -> str:
        # INT8 kernels round differently on different CPUs: the machine is part of the key
        parts = [self.workload.digest(), plan.digest(), fingerprint(), "accuracy", code_digest()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def build(self, plan: Plan, out_dir: Path) -> Candidate | Measurement:
        """Builds the plan's candidate under `out_dir` in a worker; a failure is a failed
        Measurement with its reason."""
        built = self._run("build", {"plan": plan.to_dict(), "model": str(self.workload.model_path),
                                    "data": str(self._data_file), "out": str(Path(out_dir).resolve()),
                                    "shapes": self.workload.shapes},
                          out_dir, self.protocol.build_timeout)
        if built.get("status") != "ok":
            return Measurement.failed(f"build: {built['reason']}", transient=built.get("transient", False))
        return Candidate(Path(built["model"]), built["settings"], built.get("note"))

    def check_metric(self, split: str = "eval") -> float:
        """The unmodified model's score on `split` by the workload's metric, before anything is
        built: MetricError (one line) if the metric cannot score it, ModelError if the model
        does not run on its data."""
        from autotune.metrics import MetricError

        with tempfile.TemporaryDirectory(prefix="autotune-") as tmp:
            result = self._run("check", self._spec(split), Path(tmp),
                               self.protocol.measure_timeout)
        if result.get("status") == "ok":
            return result["score"]
        if result.get("metric"):
            m = self.workload.metric
            what = f"function {m.function}" if m.function else m.name
            raise MetricError(f"the metric ({what}) fails on the unmodified model, so no candidate "
                              f"could be judged: {result['reason']}")
        raise ModelError(result["reason"])

    def measure_built(self, model_path: Path, settings: dict[str, Any],
                      split: str = "eval") -> Measurement:
        """Measures an already built candidate (a tuned-model directory) and the baseline's
        accuracy beside it, on `split` (holdout: data the search never saw); never cached."""
        with tempfile.TemporaryDirectory(prefix="autotune-") as tmp:
            m = self._measure(Path(model_path), settings, Path(tmp), baseline_accuracy=True,
                              split=split)
        return Measurement(**{**{f.name: getattr(m, f.name) for f in fields(m)},
                              "provenance": self._provenance()})

    def compare(self, plans: list[Plan | Candidate], split: str = "eval") -> list[Measurement]:
        """The plans timed in one interleaved run, ratios and accuracy (on `split`) against the
        first (give the baseline, Plan(), first); never cached. A Candidate is a model built
        elsewhere (another tool's, say), timed as it is. A plan that fails to build gets a
        failed Measurement and the others run without it; if the run fails, every plan does."""
        with tempfile.TemporaryDirectory(prefix="autotune-") as tmp:
            dirs = [Path(tmp) / str(i) for i in range(len(plans))]
            for d in dirs:
                d.mkdir()
            built = [p if isinstance(p, Candidate) else self.build(p, d)
                     for p, d in zip(plans, dirs)]
            ok = [b for b in built if isinstance(b, Candidate)]
            spec = {**self._spec(split),
                    "candidates": [{"model": str(b.model), "settings": b.settings} for b in ok]}
            result = self._run("compare", spec, Path(tmp), self.protocol.measure_timeout)
        if result.get("status") != "ok":
            return [b if isinstance(b, Measurement) else Measurement.failed(result["reason"])
                    for b in built]
        rows = iter(result["rows"])
        return [b if isinstance(b, Measurement) else Measurement(
                    status="ok", metric=self.workload.metric.name, build_note=b.note,
                    higher_is_better=self.workload.metric.higher_is_better,
                    provenance=self._provenance(),
                    **{k: tuple(v) if k.endswith("_ci") else v for k, v in next(rows).items()})
                for b in built]

    def _spec(self, split: str = "eval") -> dict[str, Any]:
        """What every worker command needs: the baseline, the data and its split, the metric,
        the protocol."""
        m = self.workload.metric
        return {"baseline": str(self.workload.model_path),
                "baseline_settings": session_settings(Plan().runtime),
                "data": str(self._data_file), "split": split,
                "references": str(self._references(split)),
                "metric": {"name": m.name, "options": m.options, "function": m.function,
                           "higher_is_better": m.higher_is_better},
                "protocol": asdict(self.protocol)}

    def _measure(self, model: Path, settings: dict[str, Any], tmp: Path,
                 build_note: str | None = None, baseline_accuracy: bool = False,
                 split: str = "eval") -> Measurement:
        spec = {**self._spec(split), "model": str(Path(model).resolve()), "settings": settings,
                "baseline_accuracy": baseline_accuracy}
        result = self._run("measure", spec, tmp, self.protocol.measure_timeout)
        if result.get("status") != "ok":
            return Measurement.failed(result["reason"], build_note=build_note,
                                      transient=result.get("transient", False))
        result.pop("status")
        return Measurement(status="ok", build_note=build_note,
                           model_size_mb=model.stat().st_size / 2**20, **result)

    def _references(self, split: str = "eval") -> Path:
        """Where the baseline's outputs on a split are kept, for every metric to compare with."""
        import onnxruntime

        from autotune.paths import cache_dir

        part = "" if split == "eval" else f"-{split}"
        return cache_dir() / "references" / (f"{self.workload.digest()}{part}-"
                                             f"ort{onnxruntime.__version__}-v2.npz")

    def _provenance(self) -> dict[str, Any]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__, "machine": machine(),
                "workload": self.workload.digest(), "protocol": self.protocol.digest(),
                "code": code_digest(),
                "python": platform.python_version()}

    @staticmethod
    def _run(command: str, spec: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
        spec_file, result_file = tmp / f"{command}.spec.json", tmp / f"{command}.result.json"
        spec_file.write_text(json.dumps(spec))
        try:
            # In its own directory: ORT's quantizer can leave external-data files (UUID.data)
            # in the working directory; there they go with the rest.
            proc = subprocess.run([sys.executable, "-m", "autotune.worker", command,
                                   str(spec_file), str(result_file)], cwd=tmp,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"{command} timed out after {timeout:.0f} s",
                    "transient": True}
        if result_file.exists():
            return json.loads(result_file.read_text())
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        why = _signal_reason(proc.returncode) if proc.returncode < 0 else f"exited {proc.returncode}"
        return {"status": "failed", "transient": True,
                "reason": f"{command} worker {why}" + (f": {tail[0][:300]}" if tail else "")}
