from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests never read or write the user's cache; zoo models train once per test session."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AUTOTUNE_CACHE_DIR")
    os.environ["AUTOTUNE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AUTOTUNE_CACHE_DIR", None)
    else:
        os.environ["AUTOTUNE_CACHE_DIR"] = old


def mlp(path: Path, seed: int = 0, noise: float = 0.0, batch: str | int = "batch") -> Path:
    """A two-layer MLP, x: [batch, 16] -> y: [batch, 10], with seeded weights (+ optional noise)."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((16, 32)) * 0.5, "b1": rng.standard_normal(32) * 0.1,
               "w2": rng.standard_normal((32, 10)) * 0.5, "b2": rng.standard_normal(10) * 0.1}
    if noise:
        noisy = np.random.default_rng(seed + 1)
        weights = {k: v + noisy.standard_normal(v.shape) * noise * v.std() for k, v in weights.items()}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
         helper.make_node("Add", ["o", "b2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture
def mlp_path(tmp_path) -> Path:
    return mlp(tmp_path / "mlp.onnx")
