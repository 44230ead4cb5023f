"""Metrics: each built-in on a case whose answer is known (and one it must fail), a user's
function from a file, a metric broken on the baseline (exit 2 before anything is built), and one
that raises on some candidates (those trials fail with the reason; the run ends normally)."""
import json
from pathlib import Path

import numpy as np
import pytest

from autotune import metrics, workload
from autotune.cli import main
from autotune.errors import WorkloadError
from autotune.metrics import Metric
from autotune.store import RunStore


def _batches(*arrays, name="y"):
    return [{name: a} for a in arrays]


def test_top1_counts_the_highest_class_against_labels_and_needs_labels():
    outs = _batches(np.array([[0.1, 0.9], [0.8, 0.2]]))
    assert metrics.top1(outs, outs, [], np.array([[1, 1]])) == 0.5
    with pytest.raises(ValueError, match="needs labels"):
        metrics.top1(outs, outs, [], None)


def test_top1_agreement_compares_with_the_fp32_model():
    ref = _batches(np.array([[0.1, 0.9], [0.8, 0.2]]))
    same = _batches(np.array([[0.2, 0.7], [0.6, 0.1]]))
    flipped = _batches(np.array([[0.9, 0.1], [0.8, 0.2]]))
    assert metrics.top1_agreement(same, ref, [], None) == 1.0
    assert metrics.top1_agreement(flipped, ref, [], None) == 0.5


def test_cosine_is_one_for_scaled_vectors_and_zero_for_orthogonal_ones():
    ref = _batches(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert metrics.cosine(_batches(np.array([[3.0, 0.0], [0.0, 0.5]])), ref, [], None) == pytest.approx(1.0)
    assert metrics.cosine(_batches(np.array([[0.0, 1.0], [1.0, 0.0]])), ref, [], None) == pytest.approx(0.0)


def test_character_accuracy_counts_edits():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.character_accuracy(["abcd", "xy"], ["abcd", "xz"]) == pytest.approx(1 - 1 / 6)
    assert metrics.character_accuracy(["", "?????????"], ["ab", "c"]) == 0.0  # never below 0


def test_box_f1_matches_each_box_once_at_the_iou_threshold():
    truth = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]])]
    assert metrics.box_f1([np.array([[0, 0, 10, 10]])], truth) == pytest.approx(2 / 3)
    assert metrics.box_f1([truth[0][::-1]], truth) == 1.0
    # two found boxes on one true box: one hit, one false positive
    twice = [np.array([[0, 0, 10, 10], [0, 0, 10, 9]])]
    assert metrics.box_f1(twice, [truth[0][:1]]) == pytest.approx(2 / 3)
    shifted = [np.array([[5, 5, 15, 15], [25, 25, 35, 35]])]  # IoU 1/7 each: no match
    assert metrics.box_f1(shifted, truth) == 0.0
    assert metrics.box_f1([np.zeros((0, 4))], [np.zeros((0, 4))]) == 1.0


def test_detection_decodes_probability_maps_against_label_boxes():
    prob = np.zeros((1, 1, 64, 64), np.float32)
    prob[0, 0, 10:20, 10:40] = 0.9
    boxes = np.full((1, 1, 3, 4), np.nan, np.float32)  # (batches, batch, K, 4), NaN padding
    found = metrics.detection(_batches(prob), _batches(prob), [], None)
    assert found == 1.0  # against the FP32 model's own boxes
    from autotune.zoo import ocr

    (box,) = ocr.db_boxes(prob[0, 0])
    boxes[0, 0, 0] = box
    assert metrics.detection(_batches(prob), _batches(prob), [], boxes) == 1.0
    blank = np.zeros_like(prob)
    assert metrics.detection(_batches(blank), _batches(prob), [], boxes) == 0.0


def test_scores_that_are_not_finite_numbers_are_refused(tmp_path):
    for body, why in (("return float('nan')", "not a finite number"), ("return 'good'", "not a number")):
        f = tmp_path / f"m{len(body)}.py"
        f.write_text(f"def score(outputs, references, inputs, labels):\n    {body}\n")
        m = metrics.parse({"function": f"{f}:score"}, "w", tmp_path, False)
        with pytest.raises(ValueError, match=why):
            m.score([], [], [], None, tmp_path)


@pytest.mark.parametrize("value, message", [
    ("top2", "Did you mean `top1`"),
    ({"name": "cosine", "treshold": 1}, "has no option `treshold`"),
    ({"function": "nowhere.py:score"}, "does not exist"),
    ({"function": "score"}, "expects `path/to/file.py:name`"),
    ({"function": "no_such_module_xyz:score"}, "cannot be imported"),
    ("top1", "needs labels"),
])
def test_bad_metric_entries_get_one_clear_error(tmp_path, value, message):
    with pytest.raises(WorkloadError, match=message):
        metrics.parse(value, "w.yaml", tmp_path, has_labels=False)


def test_an_edited_metric_function_is_a_different_workload(tmp_path, mlp_path):
    f = tmp_path / "m.py"
    f.write_text("def score(outputs, references, inputs, labels):\n    return 1.0\n")
    spec = {"model": str(mlp_path), "metric": {"function": "m.py:score"}}
    (tmp_path / "w.yaml").write_text(json.dumps(spec))
    first = workload.load(workload=tmp_path / "w.yaml")
    assert first.metric == Metric("function", {}, f"{f.resolve()}:score", True)
    before = first.digest()
    f.write_text("def score(outputs, references, inputs, labels):\n    return 0.5\n")
    assert workload.load(workload=tmp_path / "w.yaml").digest() != before


USER_METRIC = '''
import numpy as np

def score(outputs, references, inputs, labels, tolerance=0.05):
    """Share of outputs within `tolerance` of the FP32 model's."""
    close = [np.abs(o["y"] - r["y"]) <= tolerance * np.abs(r["y"]).max()
             for o, r in zip(outputs, references)]
    {extra}
    return float(np.mean(np.concatenate(close)))
'''


def _user_workload(tmp_path, mlp_path, extra=""):
    (tmp_path / "my_metric.py").write_text(USER_METRIC.replace("{extra}", extra))
    (tmp_path / "w.yaml").write_text(
        f"model: {mlp_path}\nmetric:\n  function: my_metric.py:score\n  tolerance: 0.1\n")
    return tmp_path / "w.yaml"


def test_a_users_metric_from_a_file_judges_the_run(tmp_path, mlp_path):
    spec = _user_workload(tmp_path, mlp_path)
    out = tmp_path / "run"
    assert main(["tune", "--workload", str(spec), "--search-space", "cpu-int8", "--budget", "2",
                 "--out", str(out), "-q"]) == 0
    trials = RunStore(out).trials()
    base = next(t.measurement for t in trials if t.is_baseline)
    assert base.metric == "function" and base.accuracy == 1.0
    assert len(trials) == 3 and all(t.measurement.accuracy is not None for t in trials)
    assert json.loads((out / "best" / "report.json").read_text())["metric"] == "function"


def test_a_metric_broken_on_the_baseline_stops_before_anything_is_built(tmp_path, mlp_path, capsys):
    spec = _user_workload(tmp_path, mlp_path, extra="raise KeyError('label_map')")
    out = tmp_path / "run"
    assert main(["tune", "--workload", str(spec), "--budget", "5", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fails on the unmodified model" in err and "label_map" in err
    assert not out.exists()


def test_a_metric_that_raises_on_some_candidates_fails_those_trials_only(tmp_path, mlp_path):
    # Raises whenever the candidate's outputs are not exactly the FP32 model's: every INT8 one.
    spec = _user_workload(tmp_path, mlp_path, extra=(
        "if any(not np.array_equal(o['y'], r['y']) for o, r in zip(outputs, references)):\n"
        "        raise ValueError('cannot score approximate outputs')"))
    out = tmp_path / "run"
    assert main(["tune", "--workload", str(spec), "--search-space", "cpu-int8", "--budget", "2",
                 "--out", str(out), "-q"]) == 0
    measured = [t.measurement for t in RunStore(out).trials() if not t.is_baseline]
    assert len(measured) == 2 and all(
        not m.ok and "metric failed: ValueError: cannot score approximate outputs" in m.reason
        for m in measured)
    assert (out / "best" / "report.json").exists()


def test_ctc_text_reads_with_the_models_character_set_and_fails_a_wrong_reading(tmp_path):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"character": "a\nb\nc"})  # classes: blank, a, b, c, space
    path = tmp_path / "rec.onnx"
    onnx.save(model, path)

    def probs(*steps):  # one step per class index
        return np.eye(5)[list(steps)][None]  # (batch 1, steps, classes)

    cab = _batches(probs(3, 3, 0, 1, 4, 2))  # "cc" collapses, blank splits: "ca b"
    labels = np.array([["ca b"]])
    assert metrics.ctc_text(cab, cab, [], labels, model=path) == 1.0
    assert metrics.ctc_text(_batches(probs(3, 1, 1, 0, 0, 0)), cab, [], labels, model=path) == 0.5
    assert metrics.ctc_text(_batches(probs(3, 1, 4, 2)), cab, [], None, model=path) == 1.0


def test_yolo_detection_keeps_the_best_of_overlapping_boxes_above_the_score_threshold():
    # (cx, cy, w, h, score of class 0, score of class 1)
    pred = np.array([[50, 50, 20, 20, 0.9, 0.1],
                     [51, 50, 20, 20, 0.1, 0.8],   # the same object again: suppressed
                     [10, 10, 8, 8, 0.05, 0.1],    # below the score threshold
                     [80, 20, 10, 10, 0.2, 0.6]])
    assert metrics.yolo_boxes(pred).tolist() == [[40, 40, 60, 60], [75, 15, 85, 25]]
    truth = np.full((1, 1, 2, 4), np.nan)
    truth[0, 0, 0] = [40, 40, 60, 60]
    out = _batches(pred[None])
    assert metrics.detection(out, out, [], truth, decode="yolo") == pytest.approx(2 / 3)
    assert metrics.detection(out, out, [], None, decode="yolo") == 1.0
