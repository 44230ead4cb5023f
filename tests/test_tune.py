"""The tuning loop's logic, with a deterministic fake measurer (no timing here)."""
import json

import pytest

from autotune import space as spaces
from autotune import workload
from autotune.errors import UsageError
from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.plan import Candidate, Plan, session_settings
from autotune.store import RunStore
from autotune.tune import tune


class FakeMeasurer:
    """Per-channel INT8: 3x, -0.5 points; per-tensor INT8: 4x, -3 points; LAYOUT level fails;
    anything else 1.0x. Plans seen before come back as cache hits."""

    def __init__(self, w):
        self.workload, self.seen, self.calls = w, set(), 0

    def measure(self, plan: Plan) -> Measurement:
        self.calls += 1
        cached = plan.digest() in self.seen
        self.seen.add(plan.digest())
        if plan.runtime.graph_optimization_level == "layout":
            return Measurement.failed("model refused by ONNX Runtime: fake", cached=cached)
        speed, acc = 1.0, 0.95
        if plan.quantization is not None:
            speed, acc = (3.0, 0.945) if plan.quantization.per_channel else (4.0, 0.92)
        return Measurement("ok", latency_ms=10 / speed, latency_ci=(9 / speed, 11 / speed),
                           baseline_ms=10.0, baseline_ci=(9.0, 11.0), speedup=speed,
                           speedup_ci=(speed * 0.98, speed * 1.02), runs=20, peak_memory_mb=10.0,
                           model_size_mb=1.0, accuracy=acc, metric="top1", cached=cached)

    def build(self, plan, out_dir):
        return Candidate(self.workload.model_path, session_settings(plan.runtime))


@pytest.fixture
def w(mlp_path):
    return workload.load(str(mlp_path))


def _tune(w, tmp_path, **kw):
    fake = FakeMeasurer(w)
    kw.setdefault("budget", 6)
    result = tune(w, spaces.load("runtime"), out=tmp_path / "run", quiet=True, measurer=fake, **kw)
    return result, fake


def test_best_respects_the_accuracy_limit(w, tmp_path):
    result, _ = _tune(w, tmp_path, objective=Objective(max_accuracy_drop=0.01))
    assert result.best.plan.quantization.per_channel  # 3x within the limit, not the 4x outside it
    report = json.loads((tmp_path / "run/best/report.json").read_text())
    assert report["tuned"] and report["accuracy_drop"] <= 0.01


def test_nothing_good_enough_exports_the_baseline(w, tmp_path):
    result, _ = _tune(w, tmp_path, objective=Objective(max_accuracy_drop=0.0))
    assert result.best is None
    report = json.loads((tmp_path / "run/best/report.json").read_text())
    assert not report["tuned"] and "baseline configuration" in report["message"]
    assert json.loads((tmp_path / "run/best/plan.json").read_text()) == Plan().to_dict()


def test_budget_counts_real_measurements_and_failures_but_not_cache_hits(w, tmp_path):
    fake = FakeMeasurer(w)
    for p in (Plan(), *[spaces.load("runtime").plan(s) for s in spaces.load("runtime").start]):
        fake.seen.add(p.digest())  # already measured: these are cache hits now
    result = tune(w, spaces.load("runtime"), budget=5, out=tmp_path / "run", quiet=True, measurer=fake)
    assert result.measurements_used == 5
    assert sum(not t.measurement.cached for t in result.trials) == 5
    assert len(result.trials) == 5 + 2  # the two start points were free


def test_every_trial_is_recorded_with_its_reason(w, tmp_path):
    result, _ = _tune(w, tmp_path, budget=30)
    stored = RunStore(tmp_path / "run").trials()
    assert [t.number for t in stored] == list(range(len(result.trials) + 1))
    failed = [t for t in stored if not t.measurement.ok]
    assert failed and all("fake" in t.measurement.reason for t in failed)
    assert len({t.plan.digest() for t in stored}) == len(stored)  # never the same plan twice


def test_existing_run_dir_is_refused(w, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    with pytest.raises(UsageError, match="already exists"):
        _tune(w, tmp_path)


def test_same_seed_proposes_the_same_plans(w, tmp_path):
    a, _ = _tune(w, tmp_path / "a", seed=3)
    b, _ = _tune(w, tmp_path / "b", seed=3)
    assert [t.plan for t in a.trials] == [t.plan for t in b.trials]

