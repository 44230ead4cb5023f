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
                other_int8=30.0, transition_us_per_element=0.01,
                int8_s8={"a": 60.0, "b": 60.0}, other_int8_s8=30.0,
                inputs={"a": 1000, "b": 1000}, outputs={"a": 1000, "b": 1000},
                upstream={"a": [""], "b": ["a"]}, downstream={"a": ["b"], "b": [""]})
    est = Estimator(p, [_site("a"), _site("b")])
    assert est.baseline_us == 250
    one = Plan(sites=(("int8_node:a", "int8"),))
    both = Plan(sites=(("int8_node:a", "int8"), ("int8_node:b", "int8")))
    # Unowned kernels move from their FP32 to their INT8 cost with the share of FP32 time
    # converted: half of it with one node of two.
    assert est.latency_ms(one) == pytest.approx((40 + 40 + 100 + 10 + 10) / 1000)
    assert est.latency_ms(both) == pytest.approx((30 + 80 + 10 + 10) / 1000)  # no Q/DQ between
    assert est.speedup(Plan(quantization=Quantization())) == pytest.approx(250 / 130)
    assert est.speedup(Plan()) == 1.0
    signed = Quantization(mode="static", activation_type="int8")
    assert est.speedup(Plan(quantization=signed)) == pytest.approx(250 / 170)  # s8 kernels


def test_profile_times_every_quantizable_node_in_fp32_and_int8(mlp_path):
    w = workload.load(str(mlp_path))
    p = profile(w, runs=3)
    assert sorted(p.fp32) == sorted(p.int8) == ["MatMul_0", "MatMul_3"]
    assert all(v > 0 for v in p.fp32.values()) and all(v > 0 for v in p.int8.values())
    assert p.upstream == {"MatMul_0": [""], "MatMul_3": ["MatMul_0"]}
    assert p.downstream == {"MatMul_0": ["MatMul_3"], "MatMul_3": [""]}
    assert p.inputs["MatMul_0"] == 16 and p.outputs["MatMul_3"] == 10
    assert p.transition_us_per_element >= 0
    assert profile(w) == p  # cached


def test_kernels_are_charged_to_the_nodes_ort_fused_them_from():
    import onnx
    from onnx import helper

    from autotune.estimator import _Attribution

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Conv", ["x", "w3"], ["c3"], name="skip"),
             helper.make_node("Add", ["c2", "c3"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    a = _Attribution(model, ["conv1", "conv2", "skip"])
    kernels = [("r1_nchwc", "Conv", 10.0, 0),  # Conv+Relu in NCHWc, named after its output
               ("skip_token_3", "QLinearConv", 5.0, 0),  # the quantizer's suffix
               ("fused y_nchwc", "Conv", 7.0, 0),  # Conv+Add+Relu: the unclaimed of two convs
               ("ReorderOutput", "ReorderOutput", 1.0, 0),
               ("x_QuantizeLinear", "QuantizeLinear", 2.0, 0)]
    costs, other = a.charge(kernels)
    assert costs == {"conv1": 10.0, "skip": 5.0, "conv2": 7.0}
    assert other == 1.0  # Quantize / Dequantize are transitions, not "other"
