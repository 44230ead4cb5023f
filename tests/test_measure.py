import onnx
import pytest
from onnx import helper

from autotune import workload
from autotune.measure import Cache, Measurer, Protocol
from autotune.plan import Plan, RuntimeChoices
from tests.conftest import mlp

FAST = Protocol(warmup_runs=1, min_runs=6, max_runs=30, min_seconds=0, max_seconds=1)


def test_baseline_measurement_has_latency_ci_memory_and_accuracy(mlp_path):
    m = Measurer(workload.load(str(mlp_path)), FAST).measure(Plan())
    assert m.ok, m.reason
    assert m.latency_ci[0] <= m.latency_ms <= m.latency_ci[1]
    assert m.speedup_ci[0] <= m.speedup <= m.speedup_ci[1]
    assert m.runs >= 6
    assert m.peak_memory_mb >= 0 and m.model_size_mb > 0
    assert m.output_error == pytest.approx(0.0, abs=1e-6)  # the baseline is its own reference
    assert m.provenance["onnxruntime"]


def test_fidelity_fails_a_model_whose_weights_were_perturbed(tmp_path):
    w = workload.load(str(mlp(tmp_path / "ref.onnx")))
    perturbed = mlp(tmp_path / "noisy.onnx", noise=0.3)
    m = Measurer(w, FAST).measure_built(perturbed, {"graph_optimization_level": "ORT_ENABLE_ALL"})
    assert m.ok, m.reason
    assert m.output_error > 0.1
    assert m.accuracy < 0.95


def test_repeated_candidate_comes_from_the_cache(tmp_path, mlp_path):
    measurer = Measurer(workload.load(str(mlp_path)), FAST, Cache(tmp_path / "c.sqlite"))
    plan = Plan(RuntimeChoices(graph_optimization_level="basic"))
    first, again = measurer.measure(plan), measurer.measure(plan)
    assert not first.cached and again.cached
    assert again.latency_ms == first.latency_ms


def test_an_accuracy_evaluation_scores_without_timing_and_is_cached(tmp_path, mlp_path):
    from autotune.plan import Quantization

    measurer = Measurer(workload.load(str(mlp_path)), FAST, Cache(tmp_path / "c.sqlite"))
    plan = Plan(quantization=Quantization(mode="static"))
    first = measurer.evaluate(plan)
    assert first.ok and not first.timed and not first.cached, first.reason
    assert first.latency_ms is None and first.speedup is None and first.peak_memory_mb is None
    assert 0 < first.output_error < 0.5  # INT8 changes the outputs
    again = measurer.evaluate(plan)
    assert again.cached and again.output_error == first.output_error
    timed = measurer.measure(plan)  # a timing is a new measurement, and answers for accuracy
    assert timed.timed and not timed.cached and timed.output_error == first.output_error
    other = Plan(quantization=Quantization(mode="dynamic"))
    measurer.measure(other)
    assert measurer.evaluate(other).timed  # from the timing, not built again


def test_model_ort_refuses_is_a_failed_measurement(tmp_path):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.custom")],
                              "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("example.custom", 1)]), path)
    m = Measurer(workload.load(str(path)), FAST).measure(Plan())
    assert not m.ok
    assert "refused by ONNX Runtime" in m.reason and "NoSuchOp" in m.reason


@pytest.mark.parametrize("fault, reason", [("crash", "SIGSEGV"), ("hang", "timed out")])
def test_crash_and_hang_become_failed_measurements(monkeypatch, mlp_path, fault, reason):
    monkeypatch.setenv("AUTOTUNE_WORKER_FAULT", fault)
    protocol = Protocol(warmup_runs=1, min_runs=6, max_seconds=1, build_timeout=3, measure_timeout=3)
    m = Measurer(workload.load(str(mlp_path)), protocol).measure(Plan())
    assert not m.ok
    assert reason in m.reason


def test_interleaved_identical_configs_have_speedup_near_one(mlp_path):
    m = Measurer(workload.load(str(mlp_path)), FAST).measure(Plan())
    assert 0.5 < m.speedup < 2.0  # loose: a sanity check, not a timing assertion


def test_a_change_to_the_build_code_is_a_new_cache_key(monkeypatch, mlp_path):
    from autotune import measure

    measurer = Measurer(workload.load(str(mlp_path)), FAST)
    before = measurer.key(Plan())
    monkeypatch.setattr(measure, "code_digest", lambda: "changed")
    assert measurer.key(Plan()) != before


def test_compare_times_plans_in_one_run_against_the_first(mlp_path):
    from autotune.plan import Quantization

    plans = [Plan(), Plan(quantization=Quantization()), Plan(sites=(("nope:x", "apply"),))]
    base, int8, bad = Measurer(workload.load(str(mlp_path)), FAST).compare(plans)
    assert base.ok and int8.ok, (base.reason, int8.reason)
    assert base.speedup == 1.0 and base.output_error == pytest.approx(0.0, abs=1e-6)
    assert base.runs == int8.runs >= 6  # interleaved: every round times each of them
    assert int8.output_error > 0 and int8.speedup_ci[0] <= int8.speedup <= int8.speedup_ci[1]
    assert not bad.ok and "no site" in bad.reason
