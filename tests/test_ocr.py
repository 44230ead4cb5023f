from __future__ import annotations

import numpy as np
import pytest

from autotune.errors import UsageError
from autotune.zoo import ocr


def _model(name: str):
    from autotune.zoo import wheels

    try:
        return wheels.path(name)
    except UsageError:
        pytest.skip("the rapidocr-onnxruntime wheel is not installed")


def _session(name: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(_model(name)), providers=["CPUExecutionProvider"])


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _char_accuracy(preds: list[str], labels) -> float:
    errors = sum(_edit_distance(p, str(t)) for p, t in zip(preds, labels))
    return 1 - errors / sum(len(t) for t in labels)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _f1(preds: list[np.ndarray], truths: np.ndarray) -> float:
    """Greedy one-to-one matching at IoU >= 0.5, pooled over pages (NaN rows are padding)."""
    tp = n_pred = n_true = 0
    for pred, truth in zip(preds, truths):
        truth = truth[~np.isnan(truth[:, 0])]
        free = list(range(len(pred)))
        for t in truth:
            scores = [(_iou(t, pred[j]), j) for j in free]
            best = max(scores, default=(0.0, -1))
            if best[0] >= 0.5:
                free.remove(best[1])
                tp += 1
        n_pred, n_true = n_pred + len(pred), n_true + len(truth)
    return 2 * tp / (n_pred + n_true)


def _read(images: np.ndarray) -> list[str]:
    session, classes = _session("ppocr_rec"), ocr.charset(_model("ppocr_rec"))
    out: list[str] = []
    for i in range(0, len(images), 16):
        out += ocr.ctc_decode(session.run(None, {"x": images[i:i + 16]})[0], classes)
    return out


def _detect(images: np.ndarray) -> list[np.ndarray]:
    session = _session("ppocr_det")
    return [ocr.db_boxes(session.run(None, {"x": images[i:i + 1]})[0][0, 0])
            for i in range(len(images))]


def test_the_same_seed_gives_the_same_bytes():
    assert ocr.text_lines(50, 3) == ocr.text_lines(50, 3) != ocr.text_lines(50, 4)
    for make, kwargs in ((ocr.rec_data, {}), (ocr.cls_data, {}), (ocr.det_data, {"size": 256})):
        (a, la), (b, lb) = make(3, 5, **kwargs), make(3, 5, **kwargs)
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
        assert a.tobytes() != make(3, 6, **kwargs)[0].tobytes()


def test_shapes_and_dtypes():
    x, y = ocr.rec_data(5, 0, width=256)
    assert x.shape == (5, 3, 48, 256) and x.dtype == np.float32 and y.shape == (5,)
    assert y.dtype.kind == "U" and all(len(t) > 0 for t in y)
    assert -1 <= x.min() and x.max() <= 1
    x, y = ocr.cls_data(6, 0)
    assert x.shape == (6, 3, 48, 192) and x.dtype == np.float32
    assert y.dtype == np.int64 and sorted(y) == [0, 0, 0, 1, 1, 1]
    x, boxes = ocr.det_data(2, 0, size=320)
    assert x.shape == (2, 3, 320, 320) and x.dtype == np.float32
    assert boxes.shape == (2, ocr.MAX_LINES, 4) and boxes.dtype == np.float32


def test_page_boxes_are_inside_the_page_apart_and_padded_with_nan():
    _, boxes = ocr.det_data(3, 1, size=320)
    for page in boxes:
        real = page[~np.isnan(page[:, 0])]
        assert np.isnan(page[len(real):]).all() and len(real) >= 1
        assert (real[:, :2] >= 0).all() and (real[:, 2:] <= 320).all()
        assert (real[:, 2] > real[:, 0]).all() and (real[:, 3] > real[:, 1]).all()
        for i in range(len(real)):
            for j in range(i):
                assert _iou(real[i], real[j]) == 0


def test_lines_are_short_and_varied():
    lines = ocr.text_lines(300, 0)
    assert all(0 < len(t) <= ocr.MAX_CHARS and t == t.strip() and "  " not in t for t in lines)
    assert len(set(lines)) > 290
    text = "".join(lines)
    assert any(c.isdigit() for c in text) and any(c.isupper() for c in text)
    assert {"$", ":", "/", "."} <= set(text)


def test_labels_use_only_the_recognizers_characters():
    classes = ocr.charset(_model("ppocr_rec"))
    assert len(classes) == 6625 and classes[0] == "blank" and classes[-1] == " "
    allowed = set(classes[1:])
    assert set("".join(ocr.text_lines(2000, 1))) <= allowed
    assert set("".join(ocr.rec_data(20, 2)[1])) <= allowed


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    classes = ["blank", "a", "b", " "]
    steps = [0, 1, 1, 0, 1, 2, 2, 3, 0, 3, 2, 0]  # a a _ a b b ' ' _ ' ' b _
    probs = np.full((2, len(steps), 4), 0.01, np.float32)
    probs[0, np.arange(len(steps)), steps] = 0.97
    probs[1, :, 0] = 0.97  # all blank
    assert ocr.ctc_decode(probs, classes) == ["aab  b", ""]
    with pytest.raises(UsageError, match="classes|shape"):
        ocr.ctc_decode(probs[:, :, :3], classes)


def test_resize_norm_img_keeps_the_aspect_pads_with_zero_and_squashes_wide_crops():
    crop = np.full((24, 50, 3), 255, np.uint8)  # -> 48 x 100
    out = ocr.resize_norm_img(crop, 192)
    assert np.allclose(out[:, :, :100], 1.0) and (out[:, :, 100:] == 0).all()
    wide = ocr.resize_norm_img(np.full((10, 200, 3), 0, np.uint8), 192)
    assert np.allclose(wide, -1.0)  # squashed to the full width, no padding left
    row = ocr._resize_linear(np.array([[[0], [255]]], np.uint8), 4, 1)  # cv2.resize's values
    assert row[0, :, 0].tolist() == [0, 64, 191, 255]


def test_db_boxes_finds_two_rectangles_unclipped_and_drops_a_faint_blob():
    prob = np.zeros((100, 200), np.float32)
    prob[20:30, 10:91] = 0.9  # 81 x 10 pixels: box (10, 20)-(90, 29) before dilation
    prob[60:76, 120:181] = 0.8
    prob[85:95, 5:40] = 0.35  # above the threshold, mean under box_threshold
    boxes = ocr.db_boxes(prob)
    assert len(boxes) == 2
    boxes = boxes[np.argsort(boxes[:, 1])]

    def expected(x0, y0, x1, y1):  # dilation by 2x2 grows right and down by one pixel
        w, h = x1 + 1 - x0, y1 + 1 - y0
        d = w * h * 1.6 / (2 * (w + h))
        return np.rint([x0 - d, y0 - d, x1 + 1 + d, y1 + 1 + d])

    assert boxes[0].tolist() == expected(10, 20, 90, 29).tolist()
    assert boxes[1].tolist() == expected(120, 60, 180, 75).tolist()
    assert len(ocr.db_boxes(prob, box_threshold=0.3)) == 3
    assert len(ocr.db_boxes(np.zeros((32, 32), np.float32))) == 0


def test_db_boxes_clips_to_the_map_and_drops_specks():
    prob = np.zeros((50, 50), np.float32)
    prob[0:20, 30:50] = 1.0
    prob[40, 5] = 1.0  # a 2x2 region after dilation: under min_size
    boxes = ocr.db_boxes(prob)
    assert len(boxes) == 1 and boxes[0, 0] > 20 and boxes[0, 1] == 0 and boxes[0, 2] == 49


def test_det_size_must_be_a_multiple_of_32():
    with pytest.raises(UsageError, match="multiple of 32"):
        ocr.det_data(1, 0, size=300)


def test_fp32_recognizer_reads_rendered_lines():
    images, labels = ocr.rec_data(8, 11)
    assert _char_accuracy(_read(images), labels) >= 0.8


def test_fp32_detector_finds_the_lines_of_two_pages():
    images, boxes = ocr.det_data(2, 12)
    assert _f1(_detect(images), boxes) >= 0.7


@pytest.mark.slow
def test_fp32_figures_on_full_sets():
    images, labels = ocr.rec_data(200, 0)
    assert _char_accuracy(_read(images), labels) >= 0.9  # measured 0.993
    images, labels = ocr.cls_data(200, 0)
    out = np.concatenate([_session("ppocr_cls").run(None, {"x": images[i:i + 20]})[0]
                          for i in range(0, 200, 20)])
    assert (out.argmax(1) == labels).mean() >= 0.9  # measured 0.995
    images, boxes = ocr.det_data(20, 0)
    assert _f1(_detect(images), boxes) >= 0.9  # measured 0.957
