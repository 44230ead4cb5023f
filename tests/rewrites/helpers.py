"""Rule-test helpers: models written inline in ONNX text syntax, checked against ORT."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from autotune.rewrites import prepare, registry


def model(text: str, weights: dict[str, tuple[int, ...]], seed: int = 0) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        m.graph.initializer.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.5).astype(np.float32), name))
    for i, node in enumerate(m.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    onnx.checker.check_model(m, full_check=True)
    return m


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def rewrite_all(m: onnx.ModelProto, rule: str, option: str = "apply") -> tuple[onnx.ModelProto, int]:
    """Applies `rule` at every site it finds, one site at a time; returns (model, sites)."""
    prepared = prepare(m)
    rw = registry()[rule]
    found = rw.find(prepared)
    for match in found:
        rw.apply(prepared, match, option)
    out = ir.serde.serialize_model(prepared)
    onnx.checker.check_model(out, full_check=True)
    return out, len(found)


def assert_lossless(before: onnx.ModelProto, after: onnx.ModelProto, feeds) -> None:
    for a, b in zip(run(before, feeds), run(after, feeds)):
        assert np.linalg.norm(a - b) <= 1e-4 * max(np.linalg.norm(a), 1e-12)


def ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def rejected(m: onnx.ModelProto, rule: str) -> list[tuple[str, str]]:
    return registry()[rule].rejected(prepare(m))
