import pytest

from autotune.errors import UsageError
from autotune.plan import InvalidPlan, Plan, Quantization, RuntimeChoices, session_settings


def test_json_round_trip_keeps_the_plan_and_its_hash():
    plan = Plan(RuntimeChoices("layout", ("NchwcTransformer",), 1, 0, "parallel", False, True),
                Quantization(per_channel=False, calibration="entropy"))
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.digest() == plan.digest()


def test_hash_is_stable_across_runs_and_orderings():
    # A changed digest would orphan every cached measurement: change it only on purpose.
    assert Plan().digest() == Plan.from_dict({"runtime": {}, "quantization": None}).digest()
    a = Plan(RuntimeChoices(disabled_optimizers=("B", "A")))
    b = Plan(RuntimeChoices(disabled_optimizers=("A", "B")))
    assert a.digest() == b.digest()
    assert Plan().digest() == "62e06284d3e7764b"


def test_baseline_is_the_default_plan():
    assert Plan().is_baseline
    assert not Plan(quantization=Quantization()).is_baseline
    assert session_settings(Plan().runtime)["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(UsageError, match="Did you mean `quantization`"):
        Plan.from_dict({"quantisation": None})


def test_bad_values_and_unsupported_combinations_are_refused():
    with pytest.raises(UsageError, match="graph_optimization_level"):
        RuntimeChoices(graph_optimization_level="max")
    with pytest.raises(InvalidPlan):
        Quantization(activation_type="int8", weight_type="uint8")


def test_dynamic_quantization_is_one_plan_whatever_the_calibration_settings():
    a = Plan(quantization=Quantization(mode="dynamic", calibration="entropy", activation_type="int8"))
    assert a == Plan(quantization=Quantization(mode="dynamic"))
    assert "INT8 dynamic" in a.describe() and a.lossy
    with pytest.raises(UsageError, match="quantization mode"):
        Quantization(mode="weird")


def test_whole_model_dynamic_int8_builds_integer_matmuls(mlp_path, tmp_path):
    import onnx

    from autotune import workload
    from autotune.plan import apply

    w = workload.load(str(mlp_path))
    c = apply(Plan(quantization=Quantization(mode="dynamic")), mlp_path, w.data_file(), tmp_path)
    ops = {n.op_type for n in onnx.load(c.model).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
