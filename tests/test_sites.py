import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autotune import space as spaces
from autotune import workload
from autotune.errors import UsageError
from autotune.plan import Plan, apply
from autotune.sites import _regions, catalogue, stable_names

MODEL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 16] x) => (float[1, 10] y, float[32, 32] s) <float[16, 32] w1, float[32, 32] w2, float[32, 10] w3> {
  h1 = MatMul(x, w1)
  r1 = Relu(h1)
  h2 = MatMul(r1, w2)
  r2 = Relu(h2)
  y = MatMul(r2, w3)
  t = Transpose<perm = [1, 0]>(r1)
  s = MatMul(t, r2)
}
"""


def _model():
    m = onnx.parser.parse_model(MODEL)
    rng = np.random.default_rng(0)
    for name, shape in [("w1", (16, 32)), ("w2", (32, 32)), ("w3", (32, 10))]:
        m.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), name))
    return m


def test_unnamed_nodes_get_stable_unique_names():
    names = [n.name for n in stable_names(_model()).graph.node]
    assert names == [n.name for n in stable_names(_model()).graph.node]
    assert len(set(names)) == len(names) and all(names)


def test_precision_sites_cover_weighted_matmuls_with_features():
    sites = catalogue(_model(), {"x": (1, 16)})
    nodes = [s for s in sites if s.rule == "int8_node"]
    assert len(nodes) == 3  # the activation x activation MatMul is not a site
    first = nodes[0]
    assert first.kind == "precision" and first.lossy and first.options == ("fp32", "int8", "int8_dynamic")
    assert first.features["flops"] == 2 * 32 * 16
    assert first.features["output_shape"] == [1, 32]
    assert [s.id for s in catalogue(_model(), {"x": (1, 16)})] == [s.id for s in sites]


def test_regions_follow_module_paths():
    names = [f"/layer{i}/block{j}/conv{k}/Conv" for i in range(2) for j in range(3) for k in range(2)]
    groups = _regions(names)
    assert len(groups) == 6 and all(len(g) == 2 for g in groups)
    assert _regions([f"n{i}" for i in range(9)]) == [[f"n{i}" for i in range(j, min(j + 4, 9))]
                                                     for j in (0, 4, 8)]


def test_int8_at_chosen_sites_quantizes_exactly_those_nodes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    w = workload.load(str(path))
    sites = [s for s in catalogue(onnx.load(path), w.shapes) if s.rule == "int8_node"]
    chosen = sites[1]
    plan = Plan(sites=((chosen.id, "int8"),))
    c = apply(plan, path, w.data_file(), tmp_path / "out", w.shapes)
    q = onnx.load(c.model)
    onnx.checker.check_model(q, full_check=True)
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name for n in q.graph.node if n.op_type == "MatMul" and n.input[0] in dq}
    assert fed == set(chosen.nodes)
    ort.InferenceSession(str(c.model), providers=["CPUExecutionProvider"])


def test_unknown_site_in_a_plan_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    with pytest.raises(UsageError, match="no site"):
        apply(Plan(sites=(("int8_node:nope", "int8"),)), path, None, tmp_path / "o", {"x": (1, 16)})


def test_space_binds_one_choice_per_site_and_keeps_plans_small():
    space = spaces.load("cpu-int8")
    assert space.needs_sites
    bound = space.bind(catalogue(_model(), {"x": (1, 16)}))
    keys = [c.key for c in bound.site_choices]
    assert keys and all(k.startswith("site:int8_region:") for k in keys)
    assert bound.plan({k: "fp32" for k in keys}).sites == ()
    assert len(bound.plan({keys[0]: "int8"}).int8_sites) == 1


@pytest.mark.parametrize("name", ["runtime", "lossless", "cpu-int8", "full"])
def test_every_shipped_space_loads(name):
    assert spaces.load(name).name == name


def test_dynamic_int8_at_a_matmul_site_and_static_at_another(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    w = workload.load(str(path))
    sites = [s for s in catalogue(onnx.load(path), w.shapes) if s.rule == "int8_node"]
    assert all("int8_dynamic" in s.options for s in sites)  # MatMuls; a Conv would not offer it
    plan = Plan(sites=((sites[0].id, "int8_dynamic"), (sites[2].id, "int8")))
    assert plan.lossy and "dynamic INT8 at 1 site" in plan.describe()
    c = apply(plan, path, w.data_file(), tmp_path / "out", w.shapes)
    q = onnx.load(c.model)
    onnx.checker.check_model(q, full_check=True)
    ops = {n.op_type for n in q.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "DequantizeLinear"} <= ops
    assert sites[0].nodes[0] not in {n.name for n in q.graph.node if n.op_type == "MatMul"}
    ort.InferenceSession(str(c.model), providers=["CPUExecutionProvider"])


def test_whole_model_int8_applies_on_top_of_structural_sites(mlp_path, tmp_path):
    from autotune.plan import Quantization

    w = workload.load(str(mlp_path))
    fusions = [s.id for s in catalogue(onnx.load(mlp_path), w.shapes) if s.rule == "matmul_add"]
    assert len(fusions) == 2
    plan = Plan(quantization=Quantization(), sites=((fusions[0], "apply"),))
    c = apply(plan, mlp_path, w.data_file(), tmp_path / "out", w.shapes)
    ops = [n.op_type for n in onnx.load(c.model).graph.node]
    assert "Gemm" in ops and "QuantizeLinear" in ops and "DequantizeLinear" in ops


CONV_RELU = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) <float[8, 8, 3, 3] w> {
  c = Conv<pads = [1, 1, 1, 1]>(x, w)
  y = Relu(c)
}
"""


def _conv_relu(tmp_path):
    m = onnx.parser.parse_model(CONV_RELU)
    m.graph.initializer.append(onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32), "w"))
    path = tmp_path / "conv.onnx"
    onnx.save(m, path)
    return path


def test_conflicting_choices_keep_the_first_in_catalogue_order(tmp_path):
    path = _conv_relu(tmp_path)
    found = catalogue(onnx.load(path), {"x": (1, 8, 6, 6)})
    ids = {s.rule: s.id for s in found}
    assert {"conv_act", "grouped_conv", "int8_node", "int8_region"} <= set(ids)
    space = spaces.load("full").bind(found)
    plan = space.plan({f"site:{ids['conv_act']}": "apply", f"site:{ids['grouped_conv']}": "g2",
                       f"site:{ids['int8_node']}": "int8"})
    # FusedConv replaces the Conv: it cannot also be grouped, nor quantized.
    assert dict(plan.sites) == {ids["conv_act"]: "apply"}
    plan = space.plan({f"site:{ids['grouped_conv']}": "g2", f"site:{ids['int8_node']}": "int8",
                       f"site:{ids['int8_region']}": "int8"})
    assert len(plan.sites) == 3  # a grouped Conv is still a Conv; INT8 follows it


def test_a_plan_with_conflicting_sites_is_refused_with_both_names(tmp_path):
    from autotune.plan import InvalidPlan

    path = _conv_relu(tmp_path)
    found = {s.rule: s.id for s in catalogue(onnx.load(path), {"x": (1, 8, 6, 6)})}
    plan = Plan(sites=((found["conv_act"], "apply"), (found["int8_node"], "int8")))
    with pytest.raises(InvalidPlan, match="both change node"):
        apply(plan, path, None, tmp_path / "out", {"x": (1, 8, 6, 6)})


def test_fp16_region_is_marked_for_gpu_and_computes_in_float16(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    w = workload.load(str(path))
    regions = [s for s in catalogue(onnx.load(path), w.shapes) if s.rule == "fp16_region"]
    assert regions and all(s.features["provider"] == "gpu" and s.lossy for s in regions)
    assert "Relu" in regions[0].features["op_types"]  # the span, not only the MatMuls
    plan = Plan(sites=((regions[0].id, "fp16"),))
    assert plan.lossy and "FP16 at 1 region" in plan.describe()
    c = apply(plan, path, w.data_file(), tmp_path / "out", w.shapes)
    m = onnx.load(c.model)
    onnx.checker.check_model(m, full_check=True)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    x = {"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0]
    a, b = run(path), run(c.model)
    assert a.dtype == b.dtype == np.float32
    assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(a)
