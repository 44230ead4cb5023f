"""The nchwc layout rewrite: regions of Convs handed to ONNX Runtime's NchwcTransformer.

`onnx.checker.check_model(full_check=True)` accepts the com.microsoft.nchwc nodes: the checker
fails a node of a domain it has no schemas for only when the model has no opset_import for that
domain ("No opset import for domain 'com.microsoft.nchwc'") or when called with
check_custom_domain=True ("No Op registered for Conv with domain_version of 1"), and strict
shape inference skips such nodes. The rewrite declares the domain, so every rewritten model here
passes full_check (with the default check_custom_domain=False, as every rule test uses).
"""
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from autotune.rewrites import Match, layout, prepare
from tests.rewrites.helpers import assert_lossless, model, ops

RESIDUAL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 16, 8, 8] x) => (float[1, 16, 8, 8] y) <float[16, 16, 3, 3] w1, float[16] b1, float[16, 16, 3, 3] w2, float[16] b2> {
  a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
  r = Relu(a)
  c = Conv<pads = [1, 1, 1, 1]>(r, w2, b2)
  s = Add(c, x)
  y = Relu(s)
}
"""
RESIDUAL_WEIGHTS = {"w1": (16, 16, 3, 3), "b1": (16,), "w2": (16, 16, 3, 3), "b2": (16,)}

ODD = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 17, 8, 8] x) => (float[1, 16, 8, 8] y) <float[16, 17, 3, 3] w> {
  y = Conv<pads = [1, 1, 1, 1]>(x, w)
}
"""

# Whether a session runs NchwcTransformer decides what "keep" means; the rewritten model must run
# (and agree) either way.
SESSIONS = [{}, {"disabled_optimizers": ["NchwcTransformer"]}]

needs_nchwc = pytest.mark.skipif(layout.block_size() == 0, reason="this ORT has no NCHWc kernels")


def rewrite(m: onnx.ModelProto, pick=None) -> tuple[onnx.ModelProto, list[Match]]:
    """`m` with the nchwc option applied at the sites `pick` chooses (all by default)."""
    prepared = prepare(m)
    found = layout.find(prepared)
    for match in (found if pick is None else pick(found)):
        layout.apply(prepared, match, "nchwc")
    out = ir.serde.serialize_model(prepared)
    onnx.checker.check_model(out, full_check=True)
    return out, found


def run_all(m: onnx.ModelProto, feeds, disabled_optimizers=None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers).run(None, feeds)


def assert_close(expected, got) -> None:
    for a, b in zip(expected, got):
        assert np.linalg.norm(a - b) <= 1e-4 * max(np.linalg.norm(a), 1e-12)


@needs_nchwc
def test_residual_block_becomes_one_nchwc_region():
    before = model(RESIDUAL, RESIDUAL_WEIGHTS)
    after, found = rewrite(before)
    assert found == [Match("Conv_0", ("Conv_0", "Relu_1", "Conv_2", "Add_3", "Relu_4"))]
    assert {n.domain for n in after.graph.node} == {layout.DOMAIN}
    # The Add reads the region's input, which the rewrite makes NCHWc too: ORT then folds the
    # Add and both Relus into the Convs, with one reorder at each border.
    assert ops(after) == ["ReorderInput", "Conv", "Conv", "ReorderOutput"]
    assert {o.domain for o in after.opset_import} >= {"", layout.DOMAIN}
    assert [o.name for o in after.graph.output] == ["y"]
    assert dict((p.key, p.value) for p in after.metadata_props) == {
        "autotune.nchwc_block_size": str(layout.block_size())}
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    assert_lossless(before, after, {"x": x})  # ORT_DISABLE_ALL still runs the NCHWc kernels
    for session in SESSIONS:
        assert_close(run_all(before, {"x": x}), run_all(after, {"x": x}, **session))


@needs_nchwc
def test_keep_leaves_the_model_and_a_site_without_nchwc_nodes_raises():
    prepared = prepare(model(RESIDUAL, RESIDUAL_WEIGHTS))
    site = layout.find(prepared)[0]
    assert layout.apply(prepared, site, "keep") == []
    assert [n.op_type for n in prepared.graph] == ["Conv", "Relu", "Conv", "Add", "Relu"]
    with pytest.raises(ValueError, match="is gone"):
        layout.apply(prepared, Match("Conv_0", ("Conv_0", "Conv_9")), "nchwc")
    odd = prepare(model(ODD, {"w": (16, 17, 3, 3)}))
    with pytest.raises(ValueError, match="none of its nodes in NCHWc"):
        layout.apply(odd, Match("Conv_0", ("Conv_0",)), "nchwc")


@needs_nchwc
def test_conv_with_unblockable_input_channels_is_rejected_with_reason():
    m = model(ODD, {"w": (16, 17, 3, 3)})
    prepared = prepare(m)
    assert layout.find(prepared) == []
    block = layout.block_size()
    assert layout.rejected(prepared) == [
        ("Conv_0", f"17 input channels: ORT's NCHWc Conv takes fewer than {block} or a multiple "
                   f"of {layout.ALIGN}")]


@needs_nchwc
@pytest.mark.parametrize("cin,cout,group", [
    (3, 5, 1), (16, 24, 1), (20, 16, 1), (18, 16, 1), (17, 16, 1), (12, 12, 12), (6, 6, 6),
    (32, 32, 2), (32, 48, 2), (48, 32, 2), (64, 64, 4)])
def test_conv_rules_agree_with_onnxruntime(cin, cout, group):
    """The rules find and rejected use, against what the installed ORT does on this CPU."""
    text = f"""
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1, {cin}, 6, 6] x) => (float[1, {cout}, 6, 6] y)
      <float[{cout}, {cin // group}, 3, 3] w, float[{cout}] b> {{
      y = Conv<group = {group}, pads = [1, 1, 1, 1]>(x, w, b)
    }}"""
    m = model(text, {"w": (cout, cin // group, 3, 3), "b": (cout,)})
    blocked = any(n.domain == layout.DOMAIN for n in layout._optimize(m).graph.node)
    assert (len(layout.find(prepare(m))) == 1) == blocked


@needs_nchwc
def test_resnet18_regions_are_stable_and_lossless(tmp_path):
    torch = pytest.importorskip("torch")
    from autotune import zoo
    from autotune.sites import stable_names
    from autotune.zoo.train import export_onnx

    torch.manual_seed(0)
    path = tmp_path / "resnet18.onnx"
    export_onnx(zoo.get("resnet18").build(), torch.randn(1, 3, 32, 32), path)
    before = stable_names(onnx.load(str(path)))
    first, second = layout.find(prepare(before)), layout.find(prepare(before))
    assert first == second and len(first) >= 5
    assert len({m.anchor for m in first}) == len(first)
    assert all(sum(n.endswith("Conv") for n in m.nodes) <= layout.MAX_CONVS for m in first)
    # The stem and a block with a strided shortcut Conv.
    pick = [first[0], next(m for m in first if sum(n.endswith("/Conv") for n in m.nodes) == 3)]
    after, _ = rewrite(before, lambda found: pick)
    assert any(n.domain == layout.DOMAIN for n in after.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_lossless(before, after, {"input": x})
    for session in SESSIONS:
        assert_close(run_all(before, {"input": x}), run_all(after, {"input": x}, **session))
