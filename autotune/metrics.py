"""Metrics: what a candidate's outputs on the evaluation data are worth to the user, as one score.

A metric is a function `score(outputs, references, inputs, labels, **options) -> float`:

- `outputs`: the candidate's outputs, one dict (output name -> array) per evaluation batch;
- `references`: the unmodified FP32 model's outputs on the same batches, alike;
- `inputs`: the feeds, one dict (input name -> array) per batch;
- `labels`: the data set's labels, one entry per batch (shape (batches, batch, ...)), or None.

Built in: `top1` (labels), `top1_agreement`, `cosine`, `ctc_text`, `detection`, and `fidelity`
(relative output error, lower is better). A user names their own with
`metric: {function: "path/to/file.py:name"}` or `"package.module:name"`. The accuracy limit
applies to the score's drop from the FP32 model's score on the same data.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import AutotuneError, WorkloadError, did_you_mean

Batches = list[dict[str, np.ndarray]]


class MetricError(AutotuneError):
    """The workload's metric cannot score the unmodified model: nothing else can be judged."""


def _pick(batch: dict[str, np.ndarray], output: str | None) -> np.ndarray:
    if output is None:
        return next(iter(batch.values()))
    if output not in batch:
        raise ValueError(f"the model has no output `{output}` (it has {', '.join(batch)})")
    return batch[output]


def _stack(batches: Batches, output: str | None) -> np.ndarray:
    """One output of every batch, batches joined along the batch axis."""
    return np.concatenate([_pick(b, output) for b in batches])


def _need(labels: np.ndarray | None, name: str) -> np.ndarray:
    if labels is None:
        raise ValueError(f"metric {name} needs labels; the data set has none")
    return labels.reshape(-1, *labels.shape[2:])  # (batches, batch, ...) -> (samples, ...)


def top1(outputs: Batches, references: Batches, inputs: Batches, labels: np.ndarray | None,
         output: str | None = None) -> float:
    """The fraction of samples whose highest-scoring class (last axis) is the label."""
    truth = _need(labels, "top1")
    pred = _stack(outputs, output).reshape(len(truth), -1).argmax(1)
    return float((pred == truth).mean())


def top1_agreement(outputs: Batches, references: Batches, inputs: Batches,
                   labels: np.ndarray | None, output: str | None = None) -> float:
    """The fraction of positions (all axes but the last) where the candidate's highest class is
    the FP32 model's."""
    y, r = _stack(outputs, output), _stack(references, output)
    return float((y.argmax(-1) == r.argmax(-1)).mean())


def cosine(outputs: Batches, references: Batches, inputs: Batches, labels: np.ndarray | None,
           output: str | None = None) -> float:
    """Mean cosine similarity of the candidate's vectors (last axis) to the FP32 model's: for
    embedding models, where the vector is the product."""
    y = _stack(outputs, output).astype(np.float64)
    r = _stack(references, output).astype(np.float64)
    y, r = y.reshape(-1, y.shape[-1]), r.reshape(-1, r.shape[-1])
    norms = np.linalg.norm(y, axis=1) * np.linalg.norm(r, axis=1)
    return float(np.mean((y * r).sum(1) / np.maximum(norms, 1e-12)))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def character_accuracy(read: list[str], truth: list[str]) -> float:
    """1 - (edit distance / characters), over all lines together; 0 at worst."""
    chars = sum(len(t) for t in truth)
    errors = sum(edit_distance(p, t) for p, t in zip(read, truth, strict=True))
    return max(0.0, 1.0 - errors / max(chars, 1))


def ctc_text(outputs: Batches, references: Batches, inputs: Batches, labels: np.ndarray | None,
             model: Path, output: str | None = None) -> float:
    """Character accuracy of greedy CTC decoding with the model's own character set (ONNX
    metadata `character`), against the labels' strings, or against what the FP32 model reads."""
    from autotune.zoo import ocr

    classes = ocr.charset(model)
    read = ocr.ctc_decode(_stack(outputs, output), classes)
    truth = ([str(s) for s in _need(labels, "ctc_text")] if labels is not None
             else ocr.ctc_decode(_stack(references, output), classes))
    return character_accuracy(read, truth)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes (x0, y0, x1, y1): a (N, 4) x b (M, 4) -> (N, M)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def box_f1(found: list[np.ndarray], truth: list[np.ndarray], threshold: float = 0.5) -> float:
    """F1 of found boxes against true ones over all images: each true box matches at most one
    found box with IoU >= threshold, best pairs first. 1.0 when neither has any box."""
    hits = n_found = n_true = 0
    for f, t in zip(found, truth, strict=True):
        n_found, n_true = n_found + len(f), n_true + len(t)
        if not len(f) or not len(t):
            continue
        overlap = iou(np.asarray(f, np.float64), np.asarray(t, np.float64))
        used_f, used_t = set(), set()
        for k in np.argsort(overlap, axis=None)[::-1]:
            i, j = np.unravel_index(k, overlap.shape)
            if overlap[i, j] < threshold:
                break
            if i not in used_f and j not in used_t:
                hits += 1
                used_f.add(i), used_t.add(j)
    if n_found + n_true == 0:
        return 1.0
    return 2 * hits / (n_found + n_true)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by non-maximum suppression, best first: a box is dropped when
    it overlaps a better one by IoU above `threshold`."""
    order, keep = list(np.argsort(-scores)), []
    while order:
        best, order = order[0], order[1:]
        keep.append(best)
        if order:
            overlap = iou(boxes[[best]], boxes[order])[0]
            order = [i for i, o in zip(order, overlap) if o <= threshold]
    return np.array(keep, dtype=np.int64)


def yolo_boxes(prediction: np.ndarray, score_threshold: float = 0.25,
               nms_iou: float = 0.45) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) of one image's YOLO-style prediction (N, 4 + classes: centre x,
    centre y, width, height, then class scores) after the score threshold and NMS."""
    scores = prediction[:, 4:].max(axis=1)
    kept = prediction[scores > score_threshold]
    scores = scores[scores > score_threshold]
    cx, cy, w, h = kept[:, 0], kept[:, 1], kept[:, 2], kept[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes[nms(boxes, scores, nms_iou)] if len(boxes) else boxes.reshape(0, 4)


def detection(outputs: Batches, references: Batches, inputs: Batches, labels: np.ndarray | None,
              decode: str = "db", iou_threshold: float = 0.5, output: str | None = None,
              threshold: float = 0.3, box_threshold: float = 0.5, unclip_ratio: float = 1.6,
              score_threshold: float = 0.25, nms_iou: float = 0.45) -> float:
    """Box F1 at IoU `iou_threshold` after the detector's post-processing, against the labels'
    boxes ((batches, batch, K, 4), NaN rows for padding), or against the FP32 model's boxes.

    decode `db`: a text detector's probability map (batch, 1, H, W), thresholded into connected
    regions and boxes as PP-OCR does (`threshold`, `box_threshold`, `unclip_ratio`).
    decode `yolo`: predictions (batch, N, 4 + classes), boxes above `score_threshold` after
    class-agnostic NMS at `nms_iou`."""
    from autotune.zoo import ocr

    if decode not in ("db", "yolo"):
        raise ValueError(f"detection decode `{decode}` is not known; known: db, yolo")

    def boxes(batches: Batches) -> list[np.ndarray]:
        found = _stack(batches, output)
        if decode == "yolo":
            return [yolo_boxes(p, score_threshold, nms_iou) for p in found]
        return [ocr.db_boxes(m.reshape(m.shape[-2:]), threshold, box_threshold, unclip_ratio)
                for m in found]

    found = boxes(outputs)
    if labels is None:
        truth = boxes(references)
    else:
        padded = _need(labels, "detection")
        truth = [b[~np.isnan(b).any(axis=1)] for b in padded]
    return box_f1(found, truth, iou_threshold)


def fidelity(outputs: Batches, references: Batches) -> tuple[float | None, float]:
    """(top-1 agreement of the first output, relative output error) against the FP32 model.

    The output error is ||y - y_ref|| / ||y_ref - mean(y_ref)|| over every output: relative to
    how much the reference output varies with its input, so a model that ignores its input
    fails it even where plain relative error looks small."""
    agree, count, err2, var2 = 0, 0, 0.0, 0.0
    for k, name in enumerate(references[0]):
        y = np.stack([o[name] for o in outputs]).astype(np.float64)
        r = np.stack([o[name] for o in references]).astype(np.float64)
        if y.shape != r.shape:
            raise ValueError(f"output `{name}` has shape {y.shape[1:]}, the original model's "
                             f"has {r.shape[1:]}")
        err2 += float(((y - r) ** 2).sum())
        spread = float(((r - r.mean(axis=0)) ** 2).sum())
        var2 += spread if spread > 0 else float((r ** 2).sum())
        if k == 0 and r.ndim >= 3:  # (samples, batch, ..., classes): compare argmax of last axis
            agree += int((y.argmax(-1) == r.argmax(-1)).sum())
            count += int(np.prod(r.shape[:-1]))
    error = float(np.sqrt(err2 / var2)) if var2 > 0 else float(np.sqrt(err2))
    return (agree / count if count else None), error


@dataclass(frozen=True)
class Builtin:
    function: Callable[..., float] | None
    label: str  # what the score is called in tables and messages
    higher_is_better: bool = True
    labels: str = "optional"  # "required", "optional" (else the FP32 model's results) or "unused"
    options: tuple[str, ...] = ("output",)
    uses_model: bool = False  # is given the original model's path (`model=`)


BUILTIN: dict[str, Builtin] = {
    "top1": Builtin(top1, "top-1", labels="required"),
    "top1_agreement": Builtin(top1_agreement, "top-1 agreement", labels="unused"),
    "fidelity": Builtin(None, "output error", higher_is_better=False, labels="unused", options=()),
    "cosine": Builtin(cosine, "cosine", labels="unused"),
    "ctc_text": Builtin(ctc_text, "character accuracy", uses_model=True),
    "detection": Builtin(detection, "box F1", options=(
        "output", "decode", "iou_threshold", "threshold", "box_threshold", "unclip_ratio",
        "score_threshold", "nms_iou")),
}
NAMES = (*BUILTIN, "function")


@dataclass(frozen=True)
class Metric:
    """A workload's metric: a built-in name or a user's function, with its options."""

    name: str  # a BUILTIN name, or "function"
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    function: str | None = None  # "/abs/path/file.py:name" or "package.module:name"
    higher_is_better: bool = True

    @property
    def label(self) -> str:
        if self.name == "function":
            return self.function.rpartition(":")[2]
        return BUILTIN[self.name].label

    @property
    def needs_labels(self) -> bool:
        return self.name != "function" and BUILTIN[self.name].labels == "required"

    def spec(self) -> str | dict[str, Any]:
        """As a workload file holds it: the bare name when there is nothing more to say."""
        if self.name == "function":
            return {"function": self.function, "higher_is_better": self.higher_is_better,
                    **self.options}
        return {"name": self.name, **self.options} if self.options else self.name

    def digest(self) -> str:
        """Its spec and, for a user's function, the bytes of the file that defines it: editing
        the function makes every cached measurement of it stale."""
        h = hashlib.sha256(repr(self.spec()).encode())
        if self.function and (source := _source_file(self.function)) is not None:
            h.update(source.read_bytes())
        return h.hexdigest()[:16]

    def score(self, outputs: Batches, references: Batches, inputs: Batches,
              labels: np.ndarray | None, model: Path) -> float:
        """The score of `outputs`; raises whatever the metric raises, or ValueError for a
        result that is not a finite number."""
        if self.name == "function":
            fn, kwargs = load_function(self.function), dict(self.options)
        else:
            entry = BUILTIN[self.name]
            fn, kwargs = entry.function, dict(self.options)
            if entry.uses_model:
                kwargs["model"] = model
            if entry.labels == "unused":
                labels = None
        value = fn(outputs, references, inputs, labels, **kwargs)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the metric returned {type(value).__name__} {value!r:.60}, not a "
                             f"number") from None
        if not math.isfinite(number):
            raise ValueError(f"the metric returned {number}, not a finite number")
        return number


def label(metric: str | None) -> str:
    """What the named metric's score is called in tables and messages."""
    entry = BUILTIN.get(metric or "top1")
    return entry.label if entry else str(metric)


def drop_name(metric: str | None) -> str:
    """What a drop in the named metric's score is called in messages."""
    return "output error" if metric == "fidelity" else f"{label(metric)} drop"


def parse(value: Any, where: str, base: Path, has_labels: bool) -> Metric:
    """The Metric a workload's `metric:` entry describes: a name, or a mapping with `name` (a
    built-in and its options) or `function` (a user's, with `higher_is_better` and options).
    `auto` is top1 with labels, else fidelity."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise WorkloadError(f"{where}: `metric` expects a name or a mapping, got "
                            f"{type(value).__name__} {value!r}")
    options = dict(value)
    if "function" in options:
        ref = options.pop("function")
        options.pop("name", None) if options.get("name") == "function" else None
        if "name" in options:
            raise WorkloadError(f"{where}: metric has both `name` and `function`; give one")
        higher = options.pop("higher_is_better", True)
        if not isinstance(higher, bool):
            raise WorkloadError(f"{where}: metric.higher_is_better expects true or false, got "
                                f"{higher!r}")
        return Metric("function", options, _resolve(ref, where, base), higher)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise WorkloadError(f"{where}: metric needs `name` (one of {', '.join(BUILTIN)}) or "
                            f"`function` (file.py:name or package.module:name)")
    if name == "auto":
        name = "top1" if has_labels else "fidelity"
    if name not in BUILTIN:
        raise WorkloadError(f"{where}: metric `{name}` is not one of {', '.join(NAMES)}."
                            f"{did_you_mean(name, BUILTIN)}")
    entry = BUILTIN[name]
    for key in options:
        if key not in entry.options:
            allowed = ", ".join(entry.options) or "none"
            raise WorkloadError(f"{where}: metric {name} has no option `{key}`."
                                f"{did_you_mean(key, entry.options)} Its options: {allowed}")
    if entry.labels == "required" and not has_labels:
        raise WorkloadError(f"{where}: metric {name} needs labels; give an .npz with a `labels` "
                            f"array, or use metric {name}_agreement or fidelity"
                            if name == "top1" else f"{where}: metric {name} needs labels")
    return Metric(name, options, higher_is_better=entry.higher_is_better)


def _resolve(ref: Any, where: str, base: Path) -> str:
    """`file.py:name` made absolute (relative to the workload file), or `package.module:name`
    checked to be importable."""
    if not isinstance(ref, str) or ":" not in ref or not ref.rpartition(":")[2].isidentifier():
        raise WorkloadError(f"{where}: metric.function expects `path/to/file.py:name` or "
                            f"`package.module:name`, got {ref!r}")
    target, _, name = ref.rpartition(":")
    if target.endswith(".py"):
        path = Path(target) if Path(target).is_absolute() else base / target
        if not path.is_file():
            raise WorkloadError(f"{where}: metric file {path} does not exist")
        return f"{path.resolve()}:{name}"
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise WorkloadError(f"{where}: metric module `{target}` cannot be imported here; give "
                            f"a file path (file.py:{name}) or install the module")
    return ref


def _source_file(ref: str) -> Path | None:
    target = ref.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target) if Path(target).is_file() else None
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found and found.origin and Path(found.origin).is_file() else None


def load_function(ref: str) -> Callable[..., float]:
    """The callable `ref` names; ValueError that says what is missing."""
    target, _, name = ref.rpartition(":")
    if target.endswith(".py"):
        module_name = f"autotune_user_metric_{hashlib.sha256(target.encode()).hexdigest()[:8]}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, target)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[module_name] = module
        module = sys.modules[module_name]
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{target} defines no function `{name}`")
    return fn
