import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import RemoveUnusedNodesPass

from autotune.rewrites import attention, prepare
from tests.rewrites.helpers import assert_lossless, model, ops

RULE = attention.REWRITES[0]

# Two heads of size 4 over hidden 8; the projections stay, the rest becomes one node.
ATTENTION = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2, 4, 8] x) => (float[2, 4, 8] y) <float[8, 8] wq, float[8] bq, float[8, 8] wk, float[8] bk, float[8, 8] wv, float[8] bv> {
  split = Constant<value = int64[4] {0, 0, 2, 4}>()
  merge = Constant<value = int64[3] {0, 0, 8}>()
  mq = MatMul(x, wq)
  q = Add(mq, bq)
  mk = MatMul(x, wk)
  k = Add(mk, bk)
  mv = MatMul(x, wv)
  v = Add(mv, bv)
  rq = Reshape(q, split)
  qh = Transpose<perm = [0, 2, 1, 3]>(rq)
  rk = Reshape(k, split)
  kt = Transpose<perm = [0, 2, 3, 1]>(rk)
  rv = Reshape(v, split)
  vh = Transpose<perm = [0, 2, 1, 3]>(rv)
  s = MatMul(qh, kt)
  c = Constant<value = float {2.0}>()
  d = Div(s, c)
  p = Softmax<axis = -1>(d)
  o = MatMul(p, vh)
  ot = Transpose<perm = [0, 2, 1, 3]>(o)
  y = Reshape(ot, merge)
}
"""
WEIGHTS = {"wq": (8, 8), "bq": (8,), "wk": (8, 8), "bk": (8,), "wv": (8, 8), "bv": (8,)}
X = {"x": np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)}

# Other spellings of the same block: one head, Mul by the reciprocal (either operand order),
# no scaling at all, and k transposed in two steps as some exporters leave it.
VARIANTS = {
    "two_heads_div": ATTENTION,
    "one_head_mul": ATTENTION.replace("{0, 0, 2, 4}", "{0, 0, 1, 8}")
                             .replace("float {2.0}", "float {0.35}").replace("Div(s, c)", "Mul(c, s)"),
    "unscaled": ATTENTION.replace("  d = Div(s, c)\n", "").replace("Softmax<axis = -1>(d)",
                                                                  "Softmax<axis = -1>(s)"),
    "k_two_transposes": ATTENTION.replace(
        "kt = Transpose<perm = [0, 2, 3, 1]>(rk)",
        "kh = Transpose<perm = [0, 2, 1, 3]>(rk)\n  kt = Transpose<perm = [0, 1, 3, 2]>(kh)"),
}


def fuse(m: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """Applies the rule at every site, drops the leftovers, and checks the result."""
    prepared = prepare(m)
    found = RULE.find(prepared)
    for site in found:
        RULE.apply(prepared, site, "apply")
    RemoveUnusedNodesPass()(prepared)
    out = ir.serde.serialize_model(prepared)
    onnx.checker.check_model(out, full_check=True)
    return out, found


@pytest.mark.parametrize("name", VARIANTS)
def test_attention_block_becomes_one_multihead_attention_with_equal_outputs(name):
    before = model(VARIANTS[name], WEIGHTS)
    after, found = fuse(before)
    assert len(found) == 1 and found[0].anchor.startswith("Softmax")
    assert ops(after) == ["MatMul", "Add", "MatMul", "Add", "MatMul", "Add", "MultiHeadAttention"]
    mha = after.graph.node[-1]
    heads = {a.name: onnx.helper.get_attribute_value(a) for a in mha.attribute}["num_heads"]
    assert mha.domain == "com.microsoft" and heads == (1 if name == "one_head_mul" else 2)
    assert any(o.domain == "com.microsoft" for o in after.opset_import)
    assert_lossless(before, after, X)


def test_softmax_over_the_query_axis_is_rejected_and_says_why():
    m = model(ATTENTION.replace("Softmax<axis = -1>", "Softmax<axis = 2>"), WEIGHTS)
    assert RULE.find(prepare(m)) == []
    softmax = next(n.name for n in m.graph.node if n.op_type == "Softmax")
    assert RULE.rejected(prepare(m)) == [(softmax, "softmax is not over the last (key) axis")]


def test_masked_scores_are_rejected_and_say_why():
    text = ATTENTION.replace("p = Softmax<axis = -1>(d)", "a = Add(d, mask)\n  p = Softmax<axis = -1>(a)")
    m = model(text.replace("<float[8, 8] wq", "<float[4, 4] mask, float[8, 8] wq"),
              {**WEIGHTS, "mask": (4, 4)})
    assert RULE.find(prepare(m)) == []
    assert [reason for _, reason in RULE.rejected(prepare(m))] == [
        "a mask is added to the scores (not mapped to MultiHeadAttention's attention_bias)"]


def test_reshape_that_does_not_split_heads_is_rejected():
    # [b, 4, 8] -> [b, 2, 2, 8] pairs up tokens: its "heads" would mix two tokens each.
    m = model(ATTENTION.replace("{0, 0, 2, 4}", "{0, 2, 2, 8}").replace("{0, 0, 8}", "{0, -1, 8}"),
              WEIGHTS)
    assert RULE.find(prepare(m)) == []
    assert [r for _, r in RULE.rejected(prepare(m))] == [
        "the query Reshape is not known to split [batch, seq, hidden] into heads"]


def test_attention_probabilities_used_elsewhere_are_left_alone():
    text = ATTENTION.replace("=> (float[2, 4, 8] y)", "=> (float[2, 4, 8] y, float[2, 2, 4, 4] p)")
    assert RULE.find(prepare(model(text, WEIGHTS))) == []


def test_applying_a_site_twice_raises():
    prepared = prepare(model(ATTENTION, WEIGHTS))
    [site] = RULE.find(prepared)
    RULE.apply(prepared, site, "apply")
    with pytest.raises(ValueError, match="Softmax"):
        RULE.apply(prepared, site, "apply")


def test_zoo_transformer_encoder_fuses_all_four_layers(tmp_path):
    torch = pytest.importorskip("torch")
    from autotune import zoo
    from autotune.zoo import INPUT_NAME
    from autotune.zoo.train import export_onnx

    torch.manual_seed(0)
    path = tmp_path / "te.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(zoo.get("transformer_encoder").build(), torch.randn(1, 64, 4), path)
    before = onnx.load(path)
    after, found = fuse(before)
    assert len(found) == 4 and all(s.anchor.endswith("/Softmax") for s in found)
    assert all(len(s.nodes) == 12 for s in found)
    assert ops(after).count("MultiHeadAttention") == 4
    assert "Softmax" not in ops(after)
    # The batch axis is dynamic: check a batch other than the exported one.
    x = np.random.default_rng(5).standard_normal((3, 64, 4)).astype(np.float32)
    assert_lossless(before, after, {INPUT_NAME: x})
