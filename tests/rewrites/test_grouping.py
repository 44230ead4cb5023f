import numpy as np

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
