"""The Pareto front of a run and the picks that export one of its points."""
import json

import pytest

from autotune import workload
from autotune.cli import main
from autotune.errors import UsageError
from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.pareto import front, pick
from autotune.plan import Plan, RuntimeChoices
from autotune.store import Trial


def _trial(number, speedup, peak, accuracy, ok=True):
    m = Measurement("ok" if ok else "failed", speedup=speedup, speedup_ci=(speedup, speedup),
                    peak_memory_mb=peak, accuracy=accuracy, metric="top1")
    return Trial(number, Plan(RuntimeChoices(intra_op_threads=number)), m, "test", 0, speedup)


BASE = _trial(0, 1.0, 10.0, 0.95)
TRIALS = [_trial(1, 3.0, 10.0, 0.90),   # fastest, but 5 points lost
          _trial(2, 2.0, 10.0, 0.945),  # fast within a 1-point limit
          _trial(3, 1.5, 10.0, 0.94),   # beaten by trial 2 everywhere
          _trial(4, 1.1, 5.0, 0.95),    # smallest, as accurate as the baseline
          _trial(5, 9.0, 1.0, 0.1, ok=False)]


def test_front_keeps_the_non_dominated_trials_and_the_baseline_when_it_is_one():
    assert [t.number for t in front(TRIALS, BASE)] == [1, 2, 4]
    assert [t.number for t in front(TRIALS[2:3], BASE)] == [0, 3]  # a trade-off with the baseline


def test_a_point_whose_baseline_was_slowed_beside_it_is_not_on_the_front():
    """Its speedup is not what a fresh process measures (seen: 0.49x in the run, 0.30x in three
    fresh processes, its baseline 66% slower beside it than alone)."""
    fair = Measurement("ok", speedup=2.5, speedup_ci=(2.5, 2.5), peak_memory_mb=4.0,
                       accuracy=0.95, metric="top1", baseline_ms=10.0, baseline_alone_ms=9.5)
    slowed = Measurement(**{**fair.to_dict(), "baseline_ms": 16.0})
    busy = Measurement(**{**fair.to_dict(), "baseline_ms": 13.0, "baseline_alone_ms": 13.0})
    assert Objective().untrusted(fair) is None and "not trusted" in Objective().untrusted(slowed)
    assert "when the run began" in Objective().untrusted(busy, usual_ms=10.0)
    base = Trial(0, Plan(), Measurement(**{**BASE.measurement.to_dict(), "latency_ms": 10.0}),
                 "test", 0, 1.0)
    for m, on_front in ((fair, True), (slowed, False), (busy, False)):
        t = Trial(6, Plan(RuntimeChoices(intra_op_threads=1)), m, "test", 0, 2.5)
        assert (6 in [x.number for x in front([*TRIALS, t], base)]) is on_front


def test_picks_respect_the_accuracy_limit():
    objective = Objective(max_accuracy_drop=0.01)
    assert pick(TRIALS, BASE, "fastest", objective).number == 2
    assert pick(TRIALS, BASE, "smallest", objective).number == 4
    assert pick(TRIALS, BASE, "most-accurate", objective).number == 4
    assert pick(TRIALS, BASE, "fastest", Objective(max_accuracy_drop=0.1)).number == 1
    assert pick(TRIALS, BASE, "3", objective).number == 3
    with pytest.raises(UsageError, match="failed"):
        pick(TRIALS, BASE, "5", objective)
    with pytest.raises(UsageError, match="--pick takes"):
        pick(TRIALS, BASE, "quickest", objective)


def test_a_pareto_run_keeps_its_front_and_exports_each_point(mlp_path, tmp_path, capsys):
    from autotune import space as spaces
    from autotune.measure import Protocol
    from autotune.tune import tune

    fast = Protocol(warmup_runs=1, min_runs=6, max_runs=30, min_seconds=0, max_seconds=1)
    run = tmp_path / "run"
    tune(workload.load(str(mlp_path)), spaces.load("runtime"), strategy="nsga2", budget=4,
         objective=Objective("pareto", 0.05), out=run, protocol=fast, quiet=True)
    points = json.loads((run / "pareto.json").read_text())
    assert points and all({"number", "speedup", "memory_reduction", "accuracy_drop"} <= set(p)
                          for p in points)
    assert main(["export", str(run), "--pick", "most-accurate"]) == 0
    assert (run / "pick-most-accurate" / "model.onnx").is_file()
    number = str(points[-1]["number"])
    assert main(["export", str(run), "--pick", number, "--out", str(tmp_path / "p")]) == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert Plan.from_dict(plan).describe() == points[-1]["plan_summary"]


def test_export_of_something_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


class _Processes:
    """Stands in for the Measurer of `verify`: each fresh process measures the next speedup."""

    def __init__(self, speeds):
        self.speeds = list(speeds)

    def __call__(self, workload, protocol):
        return self

    def measure_built(self, model, settings, split="eval"):
        s = self.speeds.pop(0)
        return Measurement("ok", speedup=s, speedup_ci=(s * 0.98, s * 1.02), peak_memory_mb=50.0,
                           output_error=0.001, metric="fidelity", accuracy=1.0)


@pytest.mark.parametrize("speeds, passed", [((0.43, 0.47, 0.52), True),
                                            ((0.40, 0.41, 0.42), False),
                                            ((0.60, 0.45, 0.44), True)])
def test_a_point_kept_as_measured_is_judged_by_the_spread_of_fresh_processes(
        tmp_path, monkeypatch, mlp_path, speeds, passed):
    from autotune import export

    for name in export.FILES:
        (tmp_path / name).write_text("{}")
    (tmp_path / "report.json").write_text(json.dumps({
        "objective": {"max_accuracy_drop": 0.005, "target": "pareto"}, "claim": "as-measured",
        "tuned": True, "speedup": 0.5, "candidate": {"peak_memory_mb": 50.0}}))
    monkeypatch.setattr(export, "Measurer", _Processes(speeds))
    ok, message = export.verify(tmp_path, workload.load(str(mlp_path)))
    assert ok is passed, message
    assert "3 fresh processes" in message
