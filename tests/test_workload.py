import numpy as np
import pytest

from autotune import workload
from autotune.errors import ModelError, WorkloadError
from tests.conftest import mlp


def test_bare_model_binds_batch_to_one_and_says_so(mlp_path):
    w = workload.load(str(mlp_path))
    assert w.shapes == {"x": (1, 16)}
    assert w.metric.name == "fidelity"
    assert any("bound to 1" in n for n in w.notes)
    assert any("random" in n for n in w.notes)


def test_shape_flag_binds_inputs_and_named_dimensions(mlp_path):
    assert workload.load(str(mlp_path), shapes=["x=4x16"]).shapes == {"x": (4, 16)}
    assert workload.load(str(mlp_path), shapes=["batch=2"]).shapes == {"x": (2, 16)}


def test_unbound_dynamic_dimension_names_the_fix(tmp_path):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(WorkloadError, match=r"unbound dynamic dimension `h`.*--shape x=1x3xNxN"):
        workload.load(str(path))
    assert workload.load(str(path), shapes=["x=1x3x8x8"]).shapes == {"x": (1, 3, 8, 8)}


def test_shape_that_does_not_fit_is_refused(mlp_path):
    with pytest.raises(WorkloadError, match="does not fit"):
        workload.load(str(mlp_path), shapes=["x=1x17"])
    with pytest.raises(WorkloadError, match="Did you mean `x`"):
        workload.load(str(mlp_path), shapes=["xx=1x16"])
    with pytest.raises(WorkloadError, match="NAME=1x3x224x224"):
        workload.load(str(mlp_path), shapes=["x=1xfoo"])


def test_yaml_unknown_key_and_wrong_type(tmp_path, mlp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text(f"model: {mlp_path}\nshape: {{x: [1, 16]}}\n")
    with pytest.raises(WorkloadError, match="unknown key `shape`. Did you mean `shapes`"):
        workload.load(workload=spec)
    spec.write_text(f"model: {mlp_path}\ndata: {{calibration: many}}\n")
    with pytest.raises(WorkloadError, match="data.calibration` expects int, got str"):
        workload.load(workload=spec)


def test_missing_and_corrupt_models(tmp_path, mlp_path):
    with pytest.raises(ModelError, match="does not exist"):
        workload.load(str(tmp_path / "nope.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(mlp_path.read_bytes()[:100])
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        workload.load(str(broken))


def test_npz_data_with_labels_gives_top1_and_a_split(tmp_path):
    mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((40, 16)).astype(np.float32),
             labels=rng.integers(0, 10, 40))
    spec = tmp_path / "w.yaml"
    spec.write_text("model: m.onnx\ndata: {source: npz, path: d.npz, calibration: 8, evaluation: 32}\n")
    w = workload.load(workload=spec)
    assert w.metric.name == "top1"
    with np.load(w.data_file()) as f:
        assert f["cal:x"].shape == (8, 1, 16)
        assert f["eval:x"].shape == (32, 1, 16)
        assert f["labels"].shape == (32, 1)


def test_spec_round_trips_and_digest_depends_on_content(tmp_path):
    a = workload.load(str(mlp(tmp_path / "a.onnx", seed=0)))
    b = workload.load(str(mlp(tmp_path / "b.onnx", seed=1)))
    assert workload.from_spec(a.spec()).digest() == a.digest()
    assert a.digest() != b.digest()


def test_zoo_workload_holds_out_images_apart_from_its_evaluation():
    spec = {"model": "zoo:digits_cnn", "data": {"source": "zoo", "evaluation": 40, "holdout": 30},
            "metric": "top1"}
    w = workload.load(workload=spec)
    with np.load(w.data_file()) as f:
        ev, held = f["eval:input"], f["holdout:input"]
        assert (len(ev), len(held)) == (40, 30) and len(f["holdout_labels"]) == 30
    flat = {a.tobytes() for a in ev}
    assert not any(a.tobytes() in flat for a in held)  # no image judged twice
    with pytest.raises(WorkloadError, match="data.holdout is 1000 images"):
        workload.load(workload={**spec, "data": {"source": "zoo", "holdout": 1000}})


def test_a_cached_data_file_missing_a_split_is_made_again(mlp_path):
    w = workload.load(workload={"model": str(mlp_path), "data": {"calibration": 4, "evaluation": 4,
                                                                 "holdout": 3}})
    path = w.data_file()
    np.savez(path.with_suffix(".tmp.npz"), **{"cal:x": np.zeros((4, 1, 16), np.float32)})
    path.with_suffix(".tmp.npz").replace(path)  # as an older version wrote it: no holdout
    with np.load(w.data_file()) as f:
        assert f["holdout:x"].shape == (3, 1, 16) and f["eval:x"].shape == (4, 1, 16)
