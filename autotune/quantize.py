"""Whole-model static INT8 (QDQ) through onnxruntime.quantization, with its known failure modes
turned into clear reasons: symbolic shape inference that gives up, and models ORT then refuses."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from autotune.plan import Quantization


class _Reader:
    """Feeds the calibration part of a workload's data file, one batch at a time."""

    def __init__(self, data_file: Path) -> None:
        with np.load(data_file) as f:
            names = [k[4:] for k in f.files if k.startswith("cal:")]
            arrays = {n: f[f"cal:{n}"] for n in names}
        self._batches = [{n: arrays[n][i] for n in names} for i in range(len(arrays[names[0]]))]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def preprocess(model_path: Path, out: Path) -> tuple[Path, str]:
    """ORT's quantization pre-processing (shape inference + optimization), with fallbacks.

    Returns the model to quantize and what was done. Symbolic shape inference fails on some
    models with dynamic dimensions; then it is skipped, and if even that fails, the model is
    quantized as it is.
    """
    from onnxruntime.quantization import quant_pre_process

    errors = []
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(model_path), str(out), skip_symbolic_shape=skip_symbolic)
            return out, "pre-processed" + (" (symbolic shape inference skipped)" if skip_symbolic else "")
        except Exception as exc:  # the tool raises bare Exceptions
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return model_path, "not pre-processed (" + "; ".join(errors) + ")"


def quantize_static(model_path: Path, out: Path, q: "Quantization", data_file: Path | None,
                    work: Path) -> str:
    """Writes the QDQ model to `out`; returns a note on the pre-processing done."""
    if data_file is None:
        raise ValueError("static quantization needs calibration data")
    source, note = preprocess(model_path, work / "preprocessed.onnx")
    _quantize(source, out, q, data_file)
    return note


def quantize_dynamic(model_path: Path, out: Path, q: "Quantization") -> str:
    """Whole-model dynamic INT8 (ORT's default operator set: MatMul, Gemm, Conv, ...)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    ort_quantize_dynamic(str(model_path), str(out), per_channel=q.per_channel,
                         reduce_range=q.reduce_range, weight_type=types[q.weight_type])
    return "dynamic INT8, whole model"


def _quantize(source: Path, out: Path, q: "Quantization", data_file: Path,
              nodes: list[str] | None = None) -> None:
    """ORT's quantize_static in QDQ format with the plan's settings; int8 activations are
    symmetric, uint8 ones asymmetric."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs at INFO on every call
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=q.per_channel,
                    reduce_range=q.reduce_range, activation_type=types[q.activation_type],
                    weight_type=types[q.weight_type], calibrate_method=methods[q.calibration],
                    nodes_to_quantize=nodes,
                    extra_options={"ActivationSymmetric": q.activation_type == "int8"})
    if not reads_ranges():
        # An older quantizer (the onnxruntime-openvino 1.24 build) calibrates every time and
        # takes no ranges from outside, so its Entropy would be MinMax's (see _entropy_ranges).
        if q.calibration == "entropy":
            raise RuntimeError(f"Entropy calibration needs a quantizer that reads calibrated "
                               f"ranges (calibration_cache_path); onnxruntime "
                               f"{_ort_version()} has none")
        ort_quantize_static(str(source), str(out), _Reader(data_file), **settings)
        return
    with _calibration(source, data_file, q) as ranges:
        if q.calibration == "entropy" and not ranges.is_file():
            _entropy_ranges(source, data_file, ranges)
        ort_quantize_static(str(source), str(out), _Reader(data_file), **settings,
                            calibration_cache_path=str(ranges))


def reads_ranges() -> bool:
    """Whether the installed quantize_static takes calibrated ranges from a file (ORT 1.32 does,
    the onnxruntime-openvino 1.24 build does not): Entropy calibration here needs it."""
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    return "calibration_cache_path" in inspect.signature(ort_quantize_static).parameters


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# ORT's KL-divergence (entropy) calibration with TensorRT's histogram: 2048 bins, 128 levels.
ENTROPY_HISTOGRAM = {"num_bins": 2048, "num_quantized_bins": 128}


def _entropy_ranges(source: Path, data_file: Path, ranges: Path) -> None:
    """Entropy calibration as quantize_static cannot run it. quantize_static gives the entropy
    calibrator no histogram settings (ORT 1.32), so it runs with ORT's 128 bins for 128
    quantized levels: one candidate threshold, each tensor's whole range, which is MinMax
    (seen: the same output error as MinMax to the last digit on every zoo model). Here it runs
    on ENTROPY_HISTOGRAM, and its ranges go where quantize_static reads them."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, create_calibrator,
                                                    save_tensors_data)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    with tempfile.TemporaryDirectory(prefix="autotune-entropy-") as tmp:
        calibrator = create_calibrator(
            source, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),  # quantize_static's
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy, extra_options=ENTROPY_HISTOGRAM)
        calibrator.collect_data(_Reader(data_file))
        save_tensors_data(calibrator.compute_data(), ranges)


@contextmanager
def _calibration(source: Path, data_file: Path, q: "Quantization") -> Iterator[Path]:
    """Where ORT's quantizer keeps the activation ranges it calibrated, so that they are
    computed once per (model as given to the quantizer, calibration data, method, activation
    type) on this machine, not for every candidate (Percentile on ResNet-50: about 40 s).
    The quantizer reads the file if it exists and writes it if not; here it works on a copy, and
    a new file is moved into the cache whole, so that workers building at once never read half
    of one. The ranges depend on nothing else: per-channel, weight type and the nodes chosen
    only change what is done with them."""
    import onnxruntime

    from autotune.paths import cache_dir

    h = hashlib.sha256()
    for path in (source, data_file):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    h.update(f"{q.calibration}|{q.activation_type}|ort{onnxruntime.__version__}".encode())
    if q.calibration == "entropy":  # ranges computed before ENTROPY_HISTOGRAM were MinMax's
        h.update(json.dumps(ENTROPY_HISTOGRAM, sort_keys=True).encode())
    cached = cache_dir() / "calibration" / f"{h.hexdigest()[:20]}.json"
    with tempfile.TemporaryDirectory(prefix="autotune-calibration-") as tmp:
        work = Path(tmp) / "ranges.json"
        if cached.is_file():
            shutil.copyfile(cached, work)
        yield work
        if work.is_file() and not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.stem}.{os.getpid()}.partial")
            shutil.copyfile(work, partial)
            partial.replace(cached)


def quantize_nodes(model_path: Path, out: Path, q: "Quantization", nodes: list[str],
                   data_file: Path | None, work: Path) -> str:
    """Static INT8 QDQ of exactly `nodes`, checked afterwards.

    ORT's pre-processing optimizer renames nodes (`mm` becomes `mm/MatMulAddFusion`), so a list
    of names would silently match nothing: here it runs shape inference only, and every chosen
    node must come out fed by a DequantizeLinear, or the build fails with the names it missed.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    if data_file is None:
        raise ValueError("static quantization needs calibration data")
    source, note = model_path, "shape inference only"
    try:
        quant_pre_process(str(model_path), str(work / "inferred.onnx"), skip_optimization=True,
                          skip_symbolic_shape=True)
        source = work / "inferred.onnx"
    except Exception as exc:  # the tool raises bare Exceptions
        note = f"no shape inference ({type(exc).__name__})"
    _quantize(source, out, q, data_file, list(nodes))
    quantized = onnx.load(str(out), load_external_data=False)
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    got = {n.name for n in quantized.graph.node if n.input and n.input[0] in dq_outputs}
    missed = [n for n in nodes if n not in got]
    if missed:
        raise ValueError(f"INT8 was chosen for {len(missed)} node(s) the quantizer left in float: "
                         f"{', '.join(missed[:3])}")
    return f"INT8 at {len(nodes)} node(s); {note}"


def quantize_dynamic_nodes(model_path: Path, out: Path, nodes: list[str]) -> str:
    """Dynamic INT8 of exactly `nodes` (MatMul / Gemm): weights quantized ahead of time,
    activations at run time, so nothing is calibrated. Checked like `quantize_nodes`: every
    chosen node must come out as an integer MatMul fed by DynamicQuantizeLinear."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    ort_quantize_dynamic(str(model_path), str(out), weight_type=QuantType.QInt8,
                         nodes_to_quantize=list(nodes), op_types_to_quantize=["MatMul", "Gemm"])
    quantized = onnx.load(str(out), load_external_data=False)
    left = {n.name for n in quantized.graph.node if n.op_type in ("MatMul", "Gemm")}
    missed = [n for n in nodes if n in left]
    if missed:
        raise ValueError(f"dynamic INT8 was chosen for {len(missed)} node(s) the quantizer left "
                         f"in float: {', '.join(missed[:3])}")
    return f"dynamic INT8 at {len(nodes)} node(s)"
