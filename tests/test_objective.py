from dataclasses import replace

from autotune.measure import Measurement
from autotune.objective import Objective


def _m(speedup=2.0, ci=(1.9, 2.1), accuracy=0.95, metric="top1", error=None, memory=10.0):
    return Measurement("ok", speedup=speedup, speedup_ci=ci, accuracy=accuracy, metric=metric,
                       output_error=error, peak_memory_mb=memory, latency_ms=1.0, baseline_ms=2.0)


BASE = _m(1.0, (0.99, 1.01), accuracy=0.96, memory=20.0)


def test_a_drop_equal_to_the_limit_is_within_it():
    # 0.96 - 0.95 is 0.010000000000000009 in floating point.
    ok, why = Objective(max_accuracy_drop=0.01).verdict(_m(accuracy=0.95), BASE)
    assert ok, why


def test_accuracy_beyond_the_limit_is_kept_out_whatever_the_speed():
    ok, why = Objective(max_accuracy_drop=0.01).verdict(_m(speedup=5, ci=(4.9, 5.1), accuracy=0.90), BASE)
    assert not ok and "exceeds the limit" in why


def test_speedup_must_be_real_and_worth_it():
    assert not Objective().verdict(_m(1.05, (0.98, 1.1)), BASE)[0]  # CI reaches 1
    assert not Objective().verdict(_m(1.01, (1.005, 1.02)), BASE)[0]  # below min_gain
    assert Objective().verdict(_m(1.05, (1.03, 1.07)), BASE)[0]


def test_fidelity_uses_the_output_error():
    obj = Objective(max_accuracy_drop=0.05)
    assert obj.verdict(_m(metric="fidelity", error=0.04, accuracy=1.0), BASE)[0]
    assert not obj.verdict(_m(metric="fidelity", error=0.06, accuracy=1.0), BASE)[0]


def test_memory_objective_scores_peak_memory_and_refuses_slower():
    obj = Objective("memory")
    assert obj.score(_m(memory=10.0), BASE) == 2.0
    assert obj.verdict(_m(memory=10.0), BASE)[0]
    assert not obj.verdict(_m(speedup=0.8, ci=(0.78, 0.82), memory=10.0), BASE)[0]


def test_failed_measurement_is_never_exportable():
    assert not Objective().verdict(Measurement.failed("boom"), BASE)[0]


def test_a_speedup_over_a_baseline_the_candidate_slowed_is_not_trusted():
    disturbed = replace(_m(speedup=1.4, ci=(1.35, 1.45)), baseline_ms=3.0, baseline_alone_ms=2.0)
    ok, why = Objective().verdict(disturbed, BASE)
    assert not ok and "50% slower beside this candidate than alone" in why
    assert Objective(max_disturbance=0.6).verdict(disturbed, BASE)[0]
