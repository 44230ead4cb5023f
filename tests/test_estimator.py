"""The cost-model estimator: per-node costs from ORT's profiler, summed with Q/DQ transitions."""
import pytest

from autotune import workload
from autotune.estimator import Estimator, Profile, profile
from autotune.plan import Plan, Quantization
from autotune.sites import Site


def _site(node):
    return Site(f"int8_node:{node}", "precision", "int8_node", ("fp32", "int8"), True, (node,))


def test_estimate_adds_node_costs_and_transitions():
    p = Profile(fp32={"a": 100.0, "b": 100.0}, int8={"a": 40.0, "b": 40.0}, other=50.0,
                quantize_us_per_element=0.01, dequantize_us_per_element=0.01,
                inputs={"a": 1000, "b": 1000}, outputs={"a": 1000, "b": 1000},
                upstream={"a": [""], "b": ["a"]}, downstream={"a": ["b"], "b": [""]})
    est = Estimator(p, [_site("a"), _site("b")])
    assert est.baseline_us == 250
    one = Plan(sites=(("int8_node:a", "int8"),))
    both = Plan(sites=(("int8_node:a", "int8"), ("int8_node:b", "int8")))
    assert est.latency_ms(one) == pytest.approx((50 + 40 + 100 + 10 + 10) / 1000)
    assert est.latency_ms(both) == pytest.approx((50 + 80 + 10 + 10) / 1000)  # no Q/DQ between
    assert est.speedup(Plan(quantization=Quantization())) == pytest.approx(250 / 150)
    assert est.speedup(Plan()) == 1.0


def test_profile_times_every_quantizable_node_in_fp32_and_int8(mlp_path):
    w = workload.load(str(mlp_path))
    p = profile(w, runs=3)
    assert sorted(p.fp32) == sorted(p.int8) == ["MatMul_0", "MatMul_3"]
    assert all(v > 0 for v in p.fp32.values()) and all(v > 0 for v in p.int8.values())
    assert p.upstream == {"MatMul_0": [""], "MatMul_3": ["MatMul_0"]}
    assert p.downstream == {"MatMul_0": ["MatMul_3"], "MatMul_3": [""]}
    assert p.inputs["MatMul_0"] == 16 and p.outputs["MatMul_3"] == 10
    assert profile(w) == p  # cached
