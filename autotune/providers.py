"""Execution providers: which ONNX Runtime provider runs a candidate, its options as plan
choices, what must be installed for it, and whether this machine has it.

A plan names a provider (`cpu`, `openvino`, `cuda`, `tensorrt`) and its options in plan terms
(`openvino.precision: bf16`); `ort_options` turns them into the provider options ONNX Runtime
takes, and `autotune.runtime` puts them into a session. Only what `available()` finds is
offered by a search space; the others come with the reason they are missing.
"""
from __future__ import annotations

import functools
import json
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from autotune.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Provider:
    name: str  # in plans and search spaces
    ep: str  # ONNX Runtime's name for it
    options: dict[str, tuple[Any, ...]]  # plan option -> its values, the provider's own first
    lossy: dict[str, tuple[Any, ...]]  # plan option -> the values that may change the outputs
    install: str  # what gives it
    gpu: bool = False
    # Whether the provider's own defaults may change the outputs: OpenVINO computes in bf16 on
    # CPUs with AMX unless told otherwise (measured 0.2-0.7% output error on such a Xeon).
    lossy_defaults: bool = False

    def check(self, option: str, value: Any) -> None:
        if option not in self.options:
            raise UsageError(f"plan: execution provider `{self.name}` has no option `{option}`."
                             f"{did_you_mean(option, self.options)} Known: "
                             f"{', '.join(self.options) or 'none'}")
        if value not in self.options[option]:
            raise UsageError(f"plan: {self.name}.{option} `{value}` is not one of "
                             f"{', '.join(map(str, self.options[option]))}")

    def is_lossy(self, options: dict[str, Any]) -> bool:
        """Whether running on this provider with these options may change the outputs."""
        if any(options.get(k, self.options[k][0]) in v for k, v in self.lossy.items()):
            return True
        return self.lossy_defaults and options.get("precision", "default") == "default"


PROVIDERS: dict[str, Provider] = {p.name: p for p in [
    Provider("cpu", "CPUExecutionProvider", {}, {}, "onnxruntime"),
    Provider("openvino", "OpenVINOExecutionProvider",
             # precision: OpenVINO's inference precision hint (default: the device's own, bf16
             # on CPUs with AMX, f32 elsewhere); threads: its CPU threads (0: its default);
             # streams: parallel inference streams (latency wants one).
             {"precision": ("default", "f32", "bf16"), "threads": (0, 1, 2), "streams": (1, 2)},
             {"precision": ("bf16",)},
             "pip install onnxruntime-ep-openvino (a plugin beside onnxruntime; Intel devices), "
             "or onnxruntime-openvino in place of onnxruntime (any x86-64 CPU)",
             lossy_defaults=True),
    Provider("cuda", "CUDAExecutionProvider",
             {"conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
              "tf32": (True, False)},
             {"tf32": (True,)}, "onnxruntime-gpu and an NVIDIA GPU", gpu=True),
    Provider("tensorrt", "TensorrtExecutionProvider",
             {"fp16": (False, True), "workspace_gb": (2, 1, 4)},
             {"fp16": (True,)}, "onnxruntime-gpu with TensorRT and an NVIDIA GPU", gpu=True),
]}
NAMES = tuple(PROVIDERS)
OPTION_KEYS = tuple(f"{p.name}.{o}" for p in PROVIDERS.values() for o in p.options)


def get(name: str) -> Provider:
    if name not in PROVIDERS:
        raise UsageError(f"plan: execution provider `{name}` is not one of {', '.join(NAMES)}."
                         f"{did_you_mean(str(name), NAMES)}")
    return PROVIDERS[name]


def ort_options(name: str, options: dict[str, Any]) -> dict[str, str]:
    """The provider options ONNX Runtime takes for a plan's provider and options."""
    o = {k: v for k, v in options.items()}
    if name == "openvino":
        out = {"device_type": "CPU"}
        precision = o.get("precision", "default")
        if precision != "default":
            out["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": precision}})
        if o.get("threads", 0):
            out["num_of_threads"] = str(o["threads"])
        if o.get("streams", 1) != 1:
            out["num_streams"] = str(o["streams"])
        return out
    if name == "cuda":
        return {"cudnn_conv_algo_search": str(o.get("conv_algo_search", "EXHAUSTIVE")),
                "use_tf32": "1" if o.get("tf32", True) else "0"}
    if name == "tensorrt":
        return {"trt_fp16_enable": "True" if o.get("fp16") else "False",
                "trt_max_workspace_size": str(int(o.get("workspace_gb", 2)) * 2**30)}
    return {}


@dataclass(frozen=True)
class Availability:
    name: str
    ok: bool
    how: str  # what provides it (a package and version), or why it is missing


@functools.lru_cache(maxsize=None)
def available() -> dict[str, Availability]:
    """Every provider, found on this machine or not (with the reason)."""
    import onnxruntime as ort

    from autotune.runtime import plugin_devices

    builtin = set(ort.get_available_providers())
    found: dict[str, Availability] = {"cpu": Availability("cpu", True,
                                                          f"onnxruntime {ort.__version__}")}
    ov = PROVIDERS["openvino"]
    if ov.ep in builtin:
        found["openvino"] = Availability("openvino", True,
                                         f"built into onnxruntime-openvino {ort.__version__}")
    else:
        try:
            devices = plugin_devices(ov.ep)
        except ImportError:
            found["openvino"] = Availability("openvino", False, f"not installed: {ov.install}")
        else:
            version = _version("onnxruntime-ep-openvino")
            if devices:
                found["openvino"] = Availability("openvino", True,
                                                 f"onnxruntime-ep-openvino {version} plugin")
            else:
                found["openvino"] = Availability("openvino", False, (
                    f"the onnxruntime-ep-openvino {version} plugin offers no device on this CPU "
                    f"({_cpu()}): it serves Intel devices only; on another x86-64 CPU use the "
                    f"onnxruntime-openvino build of ONNX Runtime (./setup.sh --openvino-build)"))
    gpu = _gpu()
    for p in (PROVIDERS["cuda"], PROVIDERS["tensorrt"]):
        if p.ep not in builtin:
            found[p.name] = Availability(p.name, False, f"not in this onnxruntime: needs {p.install}")
        elif not gpu:
            found[p.name] = Availability(p.name, False, "no NVIDIA GPU found (nvidia-smi)")
        else:
            found[p.name] = Availability(p.name, True, f"onnxruntime-gpu {ort.__version__} on {gpu}")
    return found


def versions() -> str:
    """What, besides onnxruntime, decides how the available providers run: for cache keys."""
    have = [a for a in available().values() if a.ok and a.name != "cpu"]
    return ",".join(f"{a.name}={a.how}" for a in have)


def _gpu() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _cpu() -> str:
    from autotune.measure import machine

    return machine()["cpu"] or platform.processor()
