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


def train_and_export(model: "ZooModel", out: Path, log: Callable[[str], None]) -> dict:
    import torch
    from torch.nn import functional as F

    from autotune.zoo import INPUT_NAME, OUTPUT_NAME

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
        x = torch.from_numpy(_inputs(model, train_x, size))
        for _ in range(steps):
            idx = torch.randint(0, len(x), (BATCH,), generator=rng)
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), labels[idx]).backward()
            opt.step()
            schedule.step()
            done += 1
            if done % 50 == 0:
                log(f"  {model.name}: step {done}/{total}, {time.perf_counter() - start:.0f} s")
    net.eval()
    test = torch.from_numpy(model.render(test_x))
    with torch.no_grad():
        pred = torch.cat([net(test[i:i + 64]).argmax(1) for i in range(0, len(test), 64)])
    top1 = float((pred.numpy() == test_y).mean())
    export_onnx(net, test[:1], out)
    return {"name": model.name, "top1": top1, "train_seconds": time.perf_counter() - start,
            "steps": total, "seed": SEED, "torch": torch.__version__}


def export_onnx(net, example, out: Path) -> None:
    """Exports with a dynamic batch dimension (TorchScript exporter: stable node names)."""
    import torch

    from autotune.zoo import INPUT_NAME, OUTPUT_NAME

    net.eval()
    torch.onnx.export(net, (example,), str(out), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=17, dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
