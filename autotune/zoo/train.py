"""Seeded, brief training of a zoo network on digits, then ONNX export with a dynamic batch."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autotune.zoo import data

if TYPE_CHECKING:
    from autotune.zoo import ZooModel

SEED = 0
BATCH = 32


def _inputs(model: "ZooModel", images: np.ndarray, size: int) -> np.ndarray:
    if model.input_kind == "tokens":
        return data.tokens(images)
    return data.render(images, model.channels, size)


def _detection_loss(out, boxes, size: int):
    """YOLO-style loss: objectness everywhere, class and box at the cell holding each digit's
    centre, on each of the three scales (strides 8, 16, 32)."""
    import torch
    from torch.nn import functional as F

    obj_target = torch.zeros(out.shape[:2])
    cls_loss, box_loss = 0.0, 0.0
    for b, (cx, cy, w, h, label) in enumerate(boxes):
        offset = 0
        for stride in (8, 16, 32):
            grid = size // stride
            col, row = min(int(cx // stride), grid - 1), min(int(cy // stride), grid - 1)
            k = offset + row * grid + col
            obj_target[b, k] = 1.0
            cls_loss = cls_loss + F.cross_entropy(out[b, k, 5:][None], torch.tensor([label]))
            target = torch.tensor([cx / stride - col, cy / stride - row, w / size, h / size])
            box_loss = box_loss + F.l1_loss(out[b, k, 1:5], target)
            offset += grid * grid
    n = 3 * len(boxes)
    return F.binary_cross_entropy_with_logits(out[..., 0], obj_target) * 10 + (cls_loss + box_loss) / n


def train_and_export(model: "ZooModel", out: Path, log: Callable[[str], None]) -> dict:
    import torch
    from torch.nn import functional as F

    start = time.perf_counter()
    torch.manual_seed(SEED)
    net = model.build()
    train_x, train_y, test_x, test_y = data.digits_split()
    labels = torch.from_numpy(train_y)
    total = sum(steps for _, steps in model.stages)
    opt = torch.optim.AdamW(net.parameters(), model.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, model.learning_rate, total_steps=total)
    rng = torch.Generator().manual_seed(SEED)
    net.train()
    done = 0
    for size, steps in model.stages:
        if model.input_kind == "detect":
            x_np, boxes = data.canvases(train_x, train_y, size, SEED)
            x = torch.from_numpy(x_np)
        else:
            x = torch.from_numpy(_inputs(model, train_x, size))
        for _ in range(steps):
            idx = torch.randint(0, len(x), (BATCH,), generator=rng)
            opt.zero_grad()
            if model.input_kind == "detect":
                _detection_loss(net(x[idx]), [boxes[i] for i in idx.tolist()], size).backward()
            else:
                F.cross_entropy(net(x[idx]), labels[idx]).backward()
            opt.step()
            schedule.step()
            done += 1
            if done % 50 == 0:
                log(f"  {model.name}: step {done}/{total}, {time.perf_counter() - start:.0f} s")
    net.eval()
    if model.input_kind == "detect":
        top1 = _detection_top1(net, test_x, test_y, model.size)
        example = torch.from_numpy(model.render(test_x[:1]))
    else:
        test = torch.from_numpy(model.render(test_x))
        with torch.no_grad():
            pred = torch.cat([net(test[i:i + 64]).argmax(1) for i in range(0, len(test), 64)])
        top1 = float((pred.numpy() == test_y).mean())
        example = test[:1]
    export_onnx(net, example, out, spatial=model.input_kind == "detect")
    return {"name": model.name, "top1": top1, "train_seconds": time.perf_counter() - start,
            "steps": total, "seed": SEED, "torch": torch.__version__}


def _detection_top1(net, images: np.ndarray, labels: np.ndarray, size: int) -> float:
    """Class of the most confident cell against the digit's label, on held-out canvases."""
    import torch

    x, _ = data.canvases(images, labels, size, SEED + 1)
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), 16):
            out = net(torch.from_numpy(x[i:i + 16]))
            best = out[..., 0].argmax(1)
            pred = out[torch.arange(len(out)), best, 5:].argmax(1).numpy()
            hits += int((pred == labels[i:i + 16]).sum())
    return hits / len(x)


def export_onnx(net, example, out: Path, spatial: bool = False) -> None:
    """Exports with a dynamic batch dimension (and height and width if `spatial`), with the
    TorchScript exporter, whose node names follow the module path."""
    import torch

    from autotune.zoo import INPUT_NAME, OUTPUT_NAME

    net.eval()
    axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
    torch.onnx.export(net, (example,), str(out), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=17, dynamo=False,
                      dynamic_axes={INPUT_NAME: axes,
                                    OUTPUT_NAME: {0: "batch", 1: "anchors"} if spatial else {0: "batch"}})
