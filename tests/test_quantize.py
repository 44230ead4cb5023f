"""Static INT8: activation ranges are calibrated once per model, data and method, then reused."""
from autotune import workload
from autotune.paths import cache_dir
from autotune.plan import Plan, Quantization, apply


def test_calibration_is_reused_and_gives_the_same_model(mlp_path, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    w = workload.load(str(mlp_path))
    ranges = cache_dir() / "calibration"
    before = set()
    plan = Plan(quantization=Quantization(mode="static", calibration="percentile"))
    first = apply(plan, mlp_path, w.data_file(), tmp_path / "a")
    made = set(ranges.glob("*.json")) - before
    assert len(made) == 1  # calibrated once ...
    per_tensor = Plan(quantization=Quantization(mode="static", calibration="percentile",
                                                per_channel=False))
    apply(per_tensor, mlp_path, w.data_file(), tmp_path / "b")
    assert set(ranges.glob("*.json")) - before == made  # ... and reused for other settings
    again = apply(plan, mlp_path, w.data_file(), tmp_path / "c")
    assert again.model.read_bytes() == first.model.read_bytes()
    apply(Plan(quantization=Quantization(mode="static", calibration="minmax")), mlp_path,
          w.data_file(), tmp_path / "d")
    assert len(set(ranges.glob("*.json")) - before) == 2  # another method: other ranges


def test_entropy_calibration_is_not_minmax(mlp_path, tmp_path, monkeypatch):
    """quantize_static alone runs it on a histogram that leaves each tensor's whole range: the
    model MinMax gives (ORT 1.32)."""
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    w = workload.load(str(mlp_path))
    models = {method: apply(Plan(quantization=Quantization(mode="static", calibration=method)),
                            mlp_path, w.data_file(), tmp_path / method).model.read_bytes()
              for method in ("minmax", "entropy")}
    assert models["entropy"] != models["minmax"]


def test_entropy_threshold_is_orts_search(tmp_path):
    """The array form of ORT's KL-divergence search picks the same range as ORT's own loop."""
    import numpy as np
    from onnxruntime.quantization.calibrate import HistogramCollector

    from autotune.quantize import entropy_threshold

    rng = np.random.default_rng(0)
    collector = HistogramCollector("entropy", symmetric=False, num_bins=512, num_quantized_bins=128,
                                   percentile=99.99, scenario="same")
    collector.collect_value({
        "normal": rng.standard_normal(4000).astype(np.float32),
        "skewed": (rng.standard_normal(4000) + rng.exponential(4, 4000)).astype(np.float32),
        "relu": np.maximum(rng.standard_normal(4000), 0).astype(np.float32),
        "sparse": np.where(rng.random(4000) < 0.9, 0, rng.standard_normal(4000)).astype(np.float32)})
    for name, histogram in collector.histogram_dict.items():
        assert entropy_threshold(histogram, 128) == collector.get_entropy_threshold(histogram, 128), name


def _opset11_conv(path):
    """Conv + BatchNormalization + Relu at opset 11, weights as Constant nodes (as exporters of
    the PP-OCR models wrote them)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    const = lambda name, a: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(a.astype(np.float32), name))
    nodes = [const("w", rng.standard_normal((8, 3, 3, 3)) * 0.3),
             const("b", rng.standard_normal(8) * 0.1),
             const("scale", 1 + rng.random(8)), const("shift", rng.standard_normal(8) * 0.1),
             const("mean", rng.standard_normal(8) * 0.1), const("var", 1 + rng.random(8)),
             const("fc", rng.standard_normal((8, 4)) * 0.3),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["p", "fc"], ["y"])]
    graph = helper.make_graph(
        nodes, "opset11", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_int8_builds_on_an_opset11_model_with_constant_weights(tmp_path):
    """Per-channel QDQ needs opset 13 (DequantizeLinear's axis) and the quantizer takes weights
    from initializers only: the model is made ready first, so every mode builds and loads."""
    import onnxruntime as ort

    model = _opset11_conv(tmp_path / "m.onnx")
    w = workload.load(str(model))
    plans = [Quantization(mode="static", per_channel=True),
             Quantization(mode="static", per_channel=False, calibration="entropy"),
             Quantization(mode="dynamic", per_channel=True)]
    for i, q in enumerate(plans):
        c = apply(Plan(quantization=q), model, w.data_file(), tmp_path / str(i))
        assert "opset 11 -> 13" in c.note and "Constant node(s) as initializers" in c.note
        ops = {n.op_type for n in __import__("onnx").load(c.model).graph.node}
        assert ops & {"DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}, q
        ort.InferenceSession(str(c.model), providers=["CPUExecutionProvider"])


def test_tensors_too_narrow_for_the_histogram_still_calibrate(tmp_path):
    """numpy cannot put 2048 bins on a tensor of -3.4e38 (an attention mask) or of 1e-40 (a dead
    channel); Entropy and Percentile calibrate such models all the same."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["masked"]),
         helper.make_node("Add", ["masked", "mask"], ["m"]),
         helper.make_node("Max", ["m", "x"], ["h"]),
         helper.make_node("MatMul", ["h", "w"], ["y"])], "narrow",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.float32([1e-40]), "zero"),
         numpy_helper.from_array(np.float32([-3.4e38]), "mask"),
         numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    w = workload.load(str(tmp_path / "m.onnx"))
    for method in ("entropy", "percentile"):
        for activations in ("uint8", "int8"):  # Percentile on int8 bins absolute values
            q = Quantization(mode="static", calibration=method, activation_type=activations)
            c = apply(Plan(quantization=q), tmp_path / "m.onnx", w.data_file(),
                      tmp_path / f"{method}-{activations}")
            ort.InferenceSession(str(c.model), providers=["CPUExecutionProvider"])


def test_glue_between_int8_nodes_goes_int8_with_them():
    """A Relu and MaxPool between two INT8 convolutions are quantized with them (as whole-model
    INT8 does); glue that feeds an output or an FP32 node stays in float."""
    from onnx import TensorProto, helper

    from autotune.quantize import enclosed

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),  # to the output
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),  # FP32
             helper.make_node("Add", ["r2", "c3"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph)
    assert enclosed(model, ["conv1", "conv2"]) == ["conv1", "conv2", "pool1", "relu1"]
    # with conv3 chosen too, relu2 is still read by the Add that makes the output: float
    assert enclosed(model, ["conv1", "conv2", "conv3"]) == ["conv1", "conv2", "conv3", "pool1",
                                                           "relu1"]
    model.graph.node[-1].output[0] = "sum"  # the Add now feeds a chosen Gemm
    model.graph.node.append(helper.make_node("Gemm", ["sum", "w4"], ["y"], name="fc"))
    assert "add" in enclosed(model, ["conv1", "conv2", "conv3", "fc"])
    assert "relu2" in enclosed(model, ["conv1", "conv2", "conv3", "fc"])
