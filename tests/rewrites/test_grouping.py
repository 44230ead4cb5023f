import numpy as np
import onnx

from tests.rewrites.helpers import assert_lossless, model, ops, rejected, rewrite_all

QKV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 8] x) => (float[1, 4, 8] q, float[1, 4, 8] k, float[1, 4, 8] v) <float[8, 8] wq, float[8, 8] wk, float[8, 8] wv, float[8] bq, float[8] bk, float[8] bv> {
  mq = MatMul(x, wq)
  q = Add(bq, mq)
  mk = MatMul(x, wk)
  k = Add(bk, mk)
  mv = MatMul(x, wv)
  v = Add(bv, mv)
}
"""

CONVS = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3, 8, 8] x) => (float[1, 6, 8, 8] y) <float[4, 3, 1, 1] w1, float[2, 3, 1, 1] w2, float[4] b1> {
  a = Conv(x, w1, b1)
  b = Conv(x, w2)
  y = Concat<axis = 1>(a, b)
}
"""


def test_qkv_projections_become_one_matmul_and_a_split():
    before = model(QKV, {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "bq": (8,), "bk": (8,), "bv": (8,)})
    after, n = rewrite_all(before, "horizontal")
    assert n == 1 and sorted(ops(after)) == ["Add", "MatMul", "Split"]
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    assert_lossless(before, after, {"x": x})
    assert [o.name for o in after.graph.output] == ["q", "k", "v"]


def test_sibling_convs_merge_even_with_and_without_bias():
    before = model(CONVS, {"w1": (4, 3, 1, 1), "w2": (2, 3, 1, 1), "b1": (4,)})
    after, n = rewrite_all(before, "horizontal")
    assert n == 1 and sorted(ops(after)) == ["Concat", "Conv", "Split"]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_lossless(before, after, {"x": x})


def test_siblings_with_different_kernels_are_rejected_with_reason():
    text = CONVS.replace("float[2, 3, 1, 1] w2", "float[2, 3, 3, 3] w2").replace("b = Conv(x, w2)", "b = Conv<pads = [1, 1, 1, 1]>(x, w2)")
    m = model(text, {"w1": (4, 3, 1, 1), "w2": (2, 3, 3, 3), "b1": (4,)})
    assert rewrite_all(m, "horizontal")[1] == 0
    assert rejected(m, "horizontal") == [("Conv_0", "siblings differ in operator, kernel, stride or padding")]

DENSE = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) <float[8, 8, 3, 3] w> {
  y = Conv<pads = [1, 1, 1, 1]>(x, w)
}
"""


def test_grouped_conv_keeps_the_block_diagonal_weights():
    before = model(DENSE, {"w": (8, 8, 3, 3)})
    after, n = rewrite_all(before, "grouped_conv", "g2")
    assert n == 1 and ops(after) == ["Conv"]
    assert [a.i for a in after.graph.node[0].attribute if a.name == "group"] == [2]
    # Equal to the dense conv with the off-diagonal blocks zeroed: lossy, but exactly that.
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(before)
    w = onnx.numpy_helper.to_array(zeroed.graph.initializer[0]).copy()
    w[:4, 4:] = 0
    w[4:, :4] = 0
    zeroed.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    assert_lossless(zeroed, after, {"x": x})


def test_an_already_grouped_conv_is_rejected_with_reason():
    text = DENSE.replace("float[8, 8, 3, 3] w", "float[8, 4, 3, 3] w").replace("Conv<pads", "Conv<group = 2, pads")
    m = model(text, {"w": (8, 4, 3, 3)})
    assert rewrite_all(m, "grouped_conv", "g2")[1] == 0
    assert rejected(m, "grouped_conv") == [("Conv_0", "already grouped")]
