"""The model zoo: networks defined in code, trained briefly on scikit-learn's digits, exported to ONNX.

Nothing is downloaded. Each classifier is trained once per machine (seeded) and cached with its
held-out top-1 accuracy; `export` copies the cached ONNX file.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.errors import UsageError, did_you_mean
from autotune.paths import cache_dir

ZOO_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    build: Callable[[], object]
    input_kind: str  # "image" (batch, C, size, size), "tokens" (batch, 64, 4), "detect" (image, no labels)
    channels: int = 3
    size: int = 224
    # (input size, optimizer steps of batch 32): small sizes first keep training fast on a CPU,
    # the last stage at the deployed size makes the network accurate there.
    stages: tuple[tuple[int, int], ...] = ()
    learning_rate: float = 2e-3

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.input_kind == "tokens":
            return (batch, 64, 4)
        return (batch, self.channels, self.size, self.size)

    def render(self, images: np.ndarray, size: int | None = None) -> np.ndarray:
        """The model's input for 8x8 digit images, at its own size or at `size` (the image
        models take any height and width)."""
        from autotune.zoo import data

        size = size or self.size
        if self.input_kind == "tokens":
            return data.tokens(images)
        if self.input_kind == "detect":
            return data.canvases(images, np.zeros(len(images), np.int64), size, seed=len(images))[0]
        return data.render(images, self.channels, size)

    @property
    def labeled(self) -> bool:
        """Classifiers are judged on labels; the detector by fidelity to its FP32 outputs."""
        return self.input_kind != "detect"


def _nets():
    from autotune.zoo import nets

    return nets


MODELS: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("resnet18", "ResNet-18, 3x224x224 input",
             lambda: _nets().ResNet(_nets().BasicBlock, [2, 2, 2, 2]), "image",
             stages=((64, 100), (128, 40), (224, 24))),
    ZooModel("resnet50", "ResNet-50 (bottleneck blocks), 3x224x224 input",
             lambda: _nets().ResNet(_nets().Bottleneck, [3, 4, 6, 3]), "image",
             stages=((64, 100), (128, 40), (224, 24))),
    ZooModel("mobilenet_v2", "MobileNetV2 (depthwise separable, ReLU6), 3x224x224 input",
             lambda: _nets().MobileNetV2(), "image",
             stages=((64, 150), (128, 60), (224, 48))),
    ZooModel("transformer_encoder",
             "BERT-style encoder, 4 layers, dim 128, 4 heads (MatMul attention, LayerNorm, GELU); "
             "64 patch tokens", lambda: _nets().TransformerEncoder(), "tokens",
             stages=((0, 600),), learning_rate=1e-3),
    ZooModel("digits_cnn", "small CNN, 1x28x28 input", lambda: _nets().DigitsCNN(), "image",
             channels=1, size=28, stages=((28, 225),)),
    ZooModel("yolo_like", "YOLOv8-shaped detector (SiLU, C2f, SPPF, upsample+concat neck, 3 heads), "
             "3x320x320 input, dynamic height and width; trained to find digits on a canvas",
             lambda: _nets().YoloLike(), "detect", size=320, stages=((96, 400),)),
]}


def get(name: str) -> ZooModel:
    if name not in MODELS:
        raise UsageError(f"no zoo model named `{name}`.{did_you_mean(name, MODELS)} "
                         f"`autotune zoo list` shows them all")
    return MODELS[name]


def _paths(name: str) -> tuple[Path, Path]:
    """Cache files named by the training recipe, so a changed recipe trains anew."""
    m = get(name)
    recipe = repr((ZOO_VERSION, m.name, m.input_kind, m.channels, m.size, m.stages, m.learning_rate))
    base = cache_dir() / "zoo" / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"
    return base.with_suffix(".onnx"), base.with_suffix(".json")


def info(name: str) -> dict | None:
    """The cached model's training record (accuracy, seconds), or None if not trained yet."""
    meta = _paths(get(name).name)[1]
    return json.loads(meta.read_text()) if meta.exists() else None


def ensure(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The path of the trained, exported zoo model, training it first if this machine has not."""
    model = get(name)
    onnx_path, meta_path = _paths(name)
    if onnx_path.exists() and meta_path.exists():
        return onnx_path
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with open(onnx_path.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains; the others wait and reuse
        if onnx_path.exists() and meta_path.exists():
            return onnx_path
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        log(f"training zoo model {name} on scikit-learn digits (once per machine)...")
        from autotune.zoo.train import train_and_export

        tmp = onnx_path.with_suffix(".onnx.tmp")
        record = train_and_export(model, tmp, log)
        tmp.replace(onnx_path)
        meta_path.write_text(json.dumps(record, indent=2))
        log(f"trained {name}: held-out top-1 {record['top1']:.4f} in {record['train_seconds']:.0f} s")
    return onnx_path


def export(name: str, out: Path, log: Callable[[str], None] | None = None) -> Path:
    out = Path(out)
    src = ensure(name, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # whole or not at all
    shutil.copyfile(src, partial)
    partial.replace(out)
    return out


def dataset(name: str, calibration: int, evaluation: int, size: int | None = None,
            holdout: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({split: inputs}, {split: labels}) for a zoo model, batch-first, rendered at `size` if
    given. Calibration images come from the training part; evaluation and then holdout images
    from the held-out part (never trained on, and never the same image in both)."""
    from autotune.zoo.data import digits_split

    model = get(name)
    train_x, _, test_x, test_y = digits_split()
    parts = {"cal": (train_x[:calibration], None),
             "eval": (test_x[:evaluation], test_y[:evaluation])}
    if holdout:
        parts["holdout"] = (test_x[evaluation:evaluation + holdout],
                            test_y[evaluation:evaluation + holdout])
    samples = {split: model.render(x, size) for split, (x, _) in parts.items()}
    labels = {split: y for split, (_, y) in parts.items() if y is not None and model.labeled}
    return samples, labels


__all__ = ["MODELS", "ZooModel", "get", "ensure", "export", "dataset", "info", "INPUT_NAME",
           "OUTPUT_NAME"]
