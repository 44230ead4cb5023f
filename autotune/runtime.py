"""Loading a tuned-model directory with plain onnxruntime: nothing else of onnx-autotune needed.

    import autotune.runtime
    session = autotune.runtime.load_session("runs/r18/best")

An execution provider that this onnxruntime does not have built in but that ships as a plugin
(OpenVINO: `onnxruntime-ep-openvino`) is registered here and given its devices.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort

# Providers that ship as plugin libraries: ONNX Runtime's name -> the Python module giving
# get_ep_name() and get_library_path().
PLUGINS = {"OpenVINOExecutionProvider": "onnxruntime_ep_openvino"}
# Options a plugin takes from its devices rather than from its options.
_DEVICE_OPTIONS = {"device_type"}
_registered: set[str] = set()


def plugin_devices(ep: str) -> list:
    """The devices the plugin of provider `ep` offers, registering it once per process;
    ImportError if the plugin is not installed."""
    import importlib

    module = importlib.import_module(PLUGINS[ep])
    if ep not in _registered:
        ort.register_execution_provider_library(module.get_ep_name(), module.get_library_path())
        _registered.add(ep)
    return [d for d in ort.get_ep_devices() if d.ep_name == module.get_ep_name()]


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
    providers = settings.get("providers", ["CPUExecutionProvider"])
    options = settings.get("provider_options") or [{} for _ in providers]
    chosen: list | None = list(zip(providers, options))
    first, first_options = chosen[0]
    if first not in ort.get_available_providers() and first in PLUGINS:
        try:
            devices = plugin_devices(first)
        except ImportError:
            raise RuntimeError(f"{first} is neither built into this onnxruntime nor installed as "
                               f"a plugin: pip install {PLUGINS[first].replace('_', '-')}") from None
        if not devices:
            raise RuntimeError(f"the {first} plugin offers no device on this machine")
        so.add_provider_for_devices(devices, {k: str(v) for k, v in first_options.items()
                                              if k not in _DEVICE_OPTIONS})
        chosen = None  # the session takes its providers from the session options
    return ort.InferenceSession(str(model_path), so, providers=chosen,
                                disabled_optimizers=settings.get("disabled_optimizers") or None)


def load_session(directory: str | Path) -> ort.InferenceSession:
    """An InferenceSession for a tuned-model directory (model.onnx run with its session.json)."""
    directory = Path(directory)
    settings = json.loads((directory / "session.json").read_text())
    return create_session(directory / "model.onnx", settings)
