"""Loading a tuned-model directory with plain onnxruntime: nothing else of onnx-autotune needed.

    import autotune.runtime
    session = autotune.runtime.load_session("runs/r18/best")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort


def session_options(settings: dict[str, Any]) -> ort.SessionOptions:
    """SessionOptions from the fields of a session.json."""
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                          settings.get("graph_optimization_level", "ORT_ENABLE_ALL"))
    so.execution_mode = getattr(ort.ExecutionMode, settings.get("execution_mode", "ORT_SEQUENTIAL"))
    so.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
    so.inter_op_num_threads = int(settings.get("inter_op_num_threads", 0))
    so.enable_mem_pattern = bool(settings.get("enable_mem_pattern", True))
    so.enable_cpu_mem_arena = bool(settings.get("enable_mem_arena", True))
    for key, value in settings.get("config_entries", {}).items():
        so.add_session_config_entry(key, str(value))
    return so


def create_session(model_path: str | Path, settings: dict[str, Any],
                   extra_config: dict[str, str] | None = None) -> ort.InferenceSession:
    so = session_options(settings)
    for key, value in (extra_config or {}).items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model_path), so,
                                providers=settings.get("providers", ["CPUExecutionProvider"]),
                                disabled_optimizers=settings.get("disabled_optimizers") or None)


def load_session(directory: str | Path) -> ort.InferenceSession:
    """An InferenceSession for a tuned-model directory (model.onnx run with its session.json)."""
    directory = Path(directory)
    settings = json.loads((directory / "session.json").read_text())
    return create_session(directory / "model.onnx", settings)
