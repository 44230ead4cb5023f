import numpy as np

from tests.rewrites.helpers import assert_lossless, model, ops, rejected, rewrite_all

GELU = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2, 8] x) => (float[2, 8] y) {
  c = Constant<value = float {1.4142135}>()
  d = Div(x, c)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(e, one)
  m = Mul(x, a)
  half = Constant<value = float {0.5}>()
  y = Mul(m, half)
}
"""

SKIP_LN = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 8] a, float[1, 4, 8] b) => (float[1, 4, 8] y) <float[8] gamma, float[8] beta> {
  s = Add(a, b)
  y = LayerNormalization<axis = -1, epsilon = 0.00001>(s, gamma, beta)
}
"""

CONV_BN = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 3, 3, 3] w, float[4] s, float[4] b, float[4] mean, float[4] var> {
  c = Conv<pads = [1, 1, 1, 1]>(x, w)
  y = BatchNormalization(c, s, b, mean, var)
}
"""

MATMUL_ADD = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2, 8] x) => (float[2, 4] y) <float[8, 4] w, float[4] b> {
  m = MatMul(x, w)
  y = Add(b, m)
}
"""

X = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}


def test_gelu_is_fused_into_one_node_with_equal_outputs():
    before = model(GELU, {})
    after, n = rewrite_all(before, "gelu")
    assert n == 1 and ops(after) == ["Gelu"]
    assert_lossless(before, after, X)


def test_skip_layernorm_fuses_add_and_layernorm():
    before = model(SKIP_LN, {"gamma": (8,), "beta": (8,)})
    after, n = rewrite_all(before, "skip_layernorm")
    assert n == 1 and ops(after) == ["SkipLayerNormalization"]
    rng = np.random.default_rng(2)
    feeds = {k: rng.standard_normal((1, 4, 8)).astype(np.float32) for k in ("a", "b")}
    assert_lossless(before, after, feeds)


def test_skip_layernorm_rejects_rank_2_inputs_and_says_why():
    text = SKIP_LN.replace("[1, 4, 8]", "[4, 8]")
    m = model(text, {"gamma": (8,), "beta": (8,)})
    assert rewrite_all(m, "skip_layernorm")[1] == 0
    assert any("rank-3" in reason for _, reason in rejected(m, "skip_layernorm"))


def test_conv_bn_folds_the_normalization_into_the_weights():
    weights = {"w": (4, 3, 3, 3), "s": (4,), "b": (4,), "mean": (4,), "var": (4,)}
    before = model(CONV_BN, weights)
    # Variances must be positive.
    var = next(i for i in before.graph.initializer if i.name == "var")
    var.CopyFrom(__import__("onnx").numpy_helper.from_array(np.full(4, 0.8, np.float32), "var"))
    after, n = rewrite_all(before, "conv_bn")
    assert n == 1 and ops(after) == ["Conv"]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_lossless(before, after, {"x": x})


def test_matmul_add_becomes_gemm_in_either_operand_order():
    before = model(MATMUL_ADD, {"w": (8, 4), "b": (4,)})
    after, n = rewrite_all(before, "matmul_add")
    assert n == 1 and ops(after) == ["Gemm"]
    assert_lossless(before, after, X)


def test_matmul_add_rejects_rank_3_and_says_why():
    text = MATMUL_ADD.replace("float[2, 8] x", "float[1, 2, 8] x").replace("float[2, 4] y", "float[1, 2, 4] y")
    m = model(text, {"w": (8, 4), "b": (4,)})
    assert rewrite_all(m, "matmul_add")[1] == 0
    assert any("Rank" in reason for _, reason in rejected(m, "matmul_add"))

TRANSPOSES = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 2, 3, 4] x) => (float[1, 2, 3, 4] y) {
  t = Transpose<perm = [0, 2, 3, 1]>(x)
  y = Transpose<perm = [0, 3, 1, 2]>(t)
}
"""


def test_transpose_pair_that_cancels_disappears():
    before = model(TRANSPOSES, {})
    after, n = rewrite_all(before, "transpose_pair")
    assert n == 1 and "Transpose" not in ops(after)
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 4)).astype(np.float32)
    assert_lossless(before, after, {"x": x})


CONV_RESIDUAL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y, float[1, 8, 6, 6] y2) <float[8, 8, 3, 3] w, float[8] b, float[8, 8, 1, 1] w2> {
  c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
  r = Relu(c)
  c2 = Conv(r, w2)
  s = Add(c2, x)
  y = Relu(s)
  c3 = Conv(y, w2)
  y2 = Add(x, c3)
}
"""
CONV_WEIGHTS = {"w": (8, 8, 3, 3), "b": (8,), "w2": (8, 8, 1, 1)}
X4 = {"x": np.random.default_rng(5).standard_normal((1, 8, 6, 6)).astype(np.float32)}


def test_conv_act_fuses_only_a_conv_whose_one_consumer_is_the_activation():
    before = model(CONV_RESIDUAL, CONV_WEIGHTS)
    after, n = rewrite_all(before, "conv_act")
    assert n == 1 and ops(after) == ["FusedConv", "Conv", "Add", "Relu", "Conv", "Add"]
    assert_lossless(before, after, X4)


def test_conv_add_takes_the_residual_sum_and_the_relu_after_it():
    before = model(CONV_RESIDUAL, CONV_WEIGHTS)
    after, n = rewrite_all(before, "conv_add")
    # Conv + Add + Relu is one site (not also its Conv + Add), and so is Conv + Add alone.
    assert n == 2 and ops(after) == ["Conv", "Relu", "FusedConv", "FusedConv"]
    fused = [node for node in after.graph.node if node.op_type == "FusedConv"]
    assert [len(node.input) for node in fused] == [4, 4]
    assert_lossless(before, after, X4)


def test_conv_add_rejects_a_broadcast_summand_and_says_why():
    text = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x, float[1, 8, 1, 1] z) => (float[1, 8, 6, 6] y) <float[8, 8, 1, 1] w2> {
  c = Conv(x, w2)
  y = Add(c, z)
}
"""
    m = model(text, {"w2": (8, 8, 1, 1)})
    assert rewrite_all(m, "conv_add")[1] == 0
    assert any("broadcasts" in reason for _, reason in rejected(m, "conv_add"))


def test_conv_act_rejects_a_clip_with_computed_bounds():
    text = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x, float hi) => (float[1, 8, 6, 6] y) <float[8, 8, 1, 1] w2, float lo> {
  c = Conv(x, w2)
  y = Clip(c, lo, hi)
}
"""
    m = model(text, {"w2": (8, 8, 1, 1), "lo": ()})
    assert rewrite_all(m, "conv_act")[1] == 0
    assert any("Clip bounds" in reason for _, reason in rejected(m, "conv_act"))


def test_conv_act_folds_clip_bounds_into_the_fused_kernel():
    text = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) <float[8, 8, 1, 1] w2> {
  lo = Constant<value = float {0.0}>()
  hi = Constant<value = float {6.0}>()
  c = Conv(x, w2)
  y = Clip(c, lo, hi)
}
"""
    before = model(text, {"w2": (8, 8, 1, 1)})
    after, n = rewrite_all(before, "conv_act")
    assert n == 1 and ops(after) == ["FusedConv"]
    attrs = {a.name: a for a in after.graph.node[0].attribute}
    assert attrs["activation"].s == b"Clip" and list(attrs["activation_params"].floats) == [0.0, 6.0]
    assert_lossless(before, after, {"x": X4["x"] * 10})


GEMM_ACT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2, 8] x) => (float[2, 4] y) <float[8, 4] w, float[4] b> {
  m = Gemm(x, w, b)
  y = LeakyRelu<alpha = 0.2>(m)
}
"""


def test_gemm_act_becomes_fused_gemm():
    before = model(GEMM_ACT, {"w": (8, 4), "b": (4,)})
    after, n = rewrite_all(before, "gemm_act")
    assert n == 1 and ops(after) == ["FusedGemm"]
    assert_lossless(before, after, X)


LAYERNORM = """
<ir_version: 8, opset_import: ["": 18]>
g (float[2, 4, 8] x) => (float[2, 4, 8] y) <float[8] gamma> {
  axes = Constant<value = int64[1] {-1}>()
  mean = ReduceMean<keepdims = 1>(x, axes)
  d = Sub(x, mean)
  two = Constant<value = float {2.0}>()
  dd = Pow(d, two)
  var = ReduceMean<keepdims = 1>(dd, axes)
  eps = Constant<value = float {0.00001}>()
  ve = Add(var, eps)
  sd = Sqrt(ve)
  n = Div(d, sd)
  y = Mul(n, gamma)
}
"""


def test_decomposed_layernorm_becomes_one_layer_normalization():
    before = model(LAYERNORM, {"gamma": (8,)})
    after, n = rewrite_all(before, "layernorm")
    assert n == 1 and ops(after) == ["LayerNormalization"]
    x = np.random.default_rng(6).standard_normal((2, 4, 8)).astype(np.float32)
    assert_lossless(before, after, {"x": x})


def test_layernorm_rejects_a_computed_epsilon_and_says_why():
    text = LAYERNORM.replace("g (float[2, 4, 8] x)", "g (float[2, 4, 8] x, float eps)").replace(
        "  eps = Constant<value = float {0.00001}>()\n", "")
    m = model(text, {"gamma": (8,)})
    assert rewrite_all(m, "layernorm")[1] == 0
    assert any("Epsilon" in reason for _, reason in rejected(m, "layernorm"))


KEYS_T = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 2, 5, 4] q, float[1, 5, 2, 4] k) => (float[1, 2, 5, 5] y) {
  kt = Transpose<perm = [0, 2, 3, 1]>(k)
  y = MatMul(q, kt)
}
"""


def _feeds(**shapes):
    rng = np.random.default_rng(7)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


def test_transpose_matmul_leaves_a_transpose_that_keeps_the_innermost_axis():
    before = model(KEYS_T, {})
    after, n = rewrite_all(before, "transpose_matmul")
    assert n == 1 and ops(after) == ["Transpose", "FusedMatMul"]
    perm = list(after.graph.node[0].attribute[0].ints)
    assert perm == [0, 2, 1, 3]
    assert_lossless(before, after, _feeds(q=(1, 2, 5, 4), k=(1, 5, 2, 4)))


def test_transpose_matmul_drops_a_plain_swap_of_the_last_axes():
    text = """
<ir_version: 8, opset_import: ["": 17]>
g (float[3, 4] a, float[5, 4] b) => (float[3, 5] y) {
  bt = Transpose<perm = [1, 0]>(b)
  y = MatMul(a, bt)
}
"""
    before = model(text, {})
    after, n = rewrite_all(before, "transpose_matmul")
    assert n == 1 and ops(after) == ["FusedMatMul"]
    assert_lossless(before, after, _feeds(a=(3, 4), b=(5, 4)))


def test_transpose_matmul_rejects_a_transpose_that_moves_the_innermost_axis_and_says_why():
    text = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2, 3, 3] a, float[3, 4, 2] b) => (float[2, 3, 4] y) {
  bt = Transpose<perm = [2, 0, 1]>(b)
  y = MatMul(a, bt)
}
"""
    m = model(text, {})
    assert rewrite_all(m, "transpose_matmul")[1] == 0
    assert any("innermost axis" in reason for _, reason in rejected(m, "transpose_matmul"))


SILU = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y, float[1, 8, 6, 6] z) <float[8, 8, 1, 1] w2> {
  c = Conv(x, w2)
  s = Sigmoid(c)
  y = Mul(c, s)
  t = Sigmoid(x)
  z = Mul(t, y)
}
"""


def test_silu_becomes_quick_gelu_and_a_gate_of_another_tensor_does_not():
    before = model(SILU, {"w2": (8, 8, 1, 1)})
    after, n = rewrite_all(before, "silu")
    assert n == 1 and ops(after) == ["Conv", "QuickGelu", "Sigmoid", "Mul"]
    assert_lossless(before, after, X4)
