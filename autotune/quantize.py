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
from contextlib import chdir, contextmanager
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


# DequantizeLinear takes `axis` (per-channel scales) from opset 13 on; ORT's quantizer writes it
# whatever the model's opset ("Unrecognized attribute: axis" on the opset 11 and 12 PP-OCR models).
QDQ_OPSET = 13


def ready(model_path: Path, out: Path) -> tuple[Path, str | None]:
    """The model as ORT's quantizer can take it, written to `out` if anything had to change;
    returns the model to quantize and what was done.

    - Constant nodes become initializers: the quantizer takes weights from initializers only
      (dynamic INT8: "Expected ... to be an initializer"; static INT8 leaves such nodes in float).
    - An opset below QDQ_OPSET is raised to it with ONNX's version converter.
    - Outputs of contrib operators (the NCHWc layout's, ORT's fusions) are given their element
      type: ONNX's shape inference does not know them, and the quantizer skips a tensor of
      unknown type, so a Conv after an NCHWc region lost its input's scale ("Unable to get valid
      quantization scale for input ... when quantizing bias").
    """
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    model = onnx.load(str(model_path))
    done = []
    constants = sum(n.op_type == "Constant" for n in model.graph.node)
    if constants:
        lifted = ir.serde.deserialize_model(model)
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(lifted)
        model = ir.serde.serialize_model(lifted)
        done.append(f"{constants} Constant node(s) as initializers")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)
    if opset < QDQ_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, QDQ_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors per missing adapter
            raise ValueError(f"INT8 needs opset {QDQ_OPSET}; ONNX's version converter could not "
                             f"raise this model's opset {opset}: {str(exc).splitlines()[0]}") from None
        done.append(f"opset {opset} -> {QDQ_OPSET}")
    typed = _type_contrib_outputs(model)
    while typed and (more := _type_contrib_outputs(model)):  # types flow on past each region
        typed += more
    if typed:
        done.append(f"{typed} contrib output type(s) declared")
    if not done:
        return model_path, None
    onnx.save(model, str(out))
    return out, ", ".join(done)


def _type_contrib_outputs(model) -> int:
    """Declares the element type of contrib operators' outputs that carry none, as their first
    input's (every such operator here keeps its input's type: NCHWc reorders and kernels,
    FusedConv, ...), after ONNX's shape inference has typed what it can; returns how many were
    declared. ONNX's inference stops at each contrib operator, so a model with several needs
    several calls."""
    from onnx import helper, shape_inference

    # Only the declared types are kept: inferred shapes written into a model made ORT run the
    # transformer encoder about 5% slower (autotune.plan._rewrite).
    g, inferred = model.graph, shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.input, *inferred.output, *inferred.value_info)
             if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in g.initializer})
    declared = 0
    for node in g.node:
        if node.domain in ("", "ai.onnx") or not node.input or node.input[0] not in types:
            continue
        for name in node.output:
            if name and name not in types:
                types[name] = types[node.input[0]]
                g.value_info.append(helper.make_tensor_value_info(name, types[name], None))
                declared += 1
    return declared


def _notes(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def preprocess(model_path: Path, out: Path) -> tuple[Path, str]:
    """ORT's quantization pre-processing (shape inference + optimization), with fallbacks.

    Returns the model to quantize and what was done. Symbolic shape inference fails on some
    models with dynamic dimensions; then it is skipped, and if even that fails, the model is
    quantized as it is.
    """
    from onnxruntime.quantization import quant_pre_process

    errors = []
    model_path, out = Path(model_path).resolve(), Path(out).resolve()
    for skip_symbolic in (False, True):
        try:
            # where symbolic shape inference stops short, ORT saves its partial model (and a
            # copy of every weight) into the working directory: keep that beside `out`
            with chdir(out.parent):
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
    source, readied = ready(model_path, work / "ready.onnx")
    source, note = preprocess(source, work / "preprocessed.onnx")
    _quantize(source, out, q, data_file)
    return _notes(readied, note)


def quantize_dynamic(model_path: Path, out: Path, q: "Quantization") -> str:
    """Whole-model dynamic INT8 (ORT's default operator set: MatMul, Gemm, Conv, ...)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    source, readied = ready(model_path, out.with_name("ready.onnx"))
    ort_quantize_dynamic(str(source), str(out), per_channel=q.per_channel,
                         reduce_range=q.reduce_range, weight_type=types[q.weight_type])
    return _notes("dynamic INT8, whole model", readied)


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
        # takes no ranges from outside, so its Entropy would be MinMax's (see _histogram_ranges).
        if q.calibration == "entropy":
            raise RuntimeError(f"Entropy calibration needs a quantizer that reads calibrated "
                               f"ranges (calibration_cache_path); onnxruntime "
                               f"{_ort_version()} has none")
        ort_quantize_static(str(source), str(out), _Reader(data_file), **settings)
        return
    with _calibration(source, data_file, q) as ranges:
        if q.calibration in ("entropy", "percentile") and not ranges.is_file():
            _histogram_ranges(source, data_file, ranges, q.calibration)
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


def _histogram_ranges(source: Path, data_file: Path, ranges: Path, method: str) -> None:
    """Entropy and Percentile calibration, their ranges written where quantize_static reads them.

    quantize_static gives the entropy calibrator no histogram settings (ORT 1.32), so it runs
    with ORT's 128 bins for 128 quantized levels: one candidate threshold, each tensor's whole
    range, which is MinMax (seen: the same output error as MinMax to the last digit on every
    zoo model). Here Entropy runs on ENTROPY_HISTOGRAM, Percentile on quantize_static's own
    defaults, and both on `_histogram_collector`'s histograms."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, TensorsData,
                                                    create_calibrator, save_tensors_data)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    entropy = method == "entropy"
    with tempfile.TemporaryDirectory(prefix="autotune-calibration-") as tmp:
        calibrator = create_calibrator(
            source, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),  # quantize_static's
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy if entropy else CalibrationMethod.Percentile,
            extra_options=ENTROPY_HISTOGRAM if entropy else {})
        calibrator.collector = _histogram_collector()(
            method=method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
            scenario=calibrator.scenario)
        calibrator.collect_data(_Reader(data_file))
        if not entropy:
            save_tensors_data(calibrator.compute_data(), ranges)
            return
        levels = ENTROPY_HISTOGRAM["num_quantized_bins"]
        thresholds = {tensor: (*entropy_threshold(histogram, levels), *histogram[:2])
                      for tensor, histogram in calibrator.collector.histogram_dict.items()}
        save_tensors_data(TensorsData(CalibrationMethod.Entropy, thresholds), ranges)


def _histogram_collector():
    """ORT's HistogramCollector for tensors whose values numpy cannot put in 2048 bins: a dead
    channel's output (a range of 1e-40), a saturated Sigmoid, an attention mask of -3.4e38
    (MiniLM). ORT's raised "Too many bins for data range" on them, failing the whole build; here
    such a tensor's histogram is counted on bins whose edges may repeat. A class made on first
    use: ORT's quantization package is imported only when something is quantized."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class Collector(HistogramCollector):
        def collect(self, name_to_arr):
            try:
                return super().collect(name_to_arr)
            except ValueError:  # find the tensors numpy cannot bin, one at a time
                pass
            for name, batches in name_to_arr.items():
                if name in self.histogram_dict:
                    continue
                try:
                    super().collect({name: batches})
                except ValueError:
                    self.histogram_dict[name] = self._counted(np.asarray(batches).ravel())

        def _counted(self, x: np.ndarray) -> tuple:
            """The histogram ORT would have made: of |x| over its range (Percentile,
            symmetric), or of x over [-max|x|, max|x|] (Entropy, Percentile)."""
            low, high = np.nanmin(x), np.nanmax(x)
            absolute = self.method == "percentile" and self.symmetric
            values = np.abs(x) if absolute else x
            top = np.nanmax(np.abs(x))
            first, last = (np.nanmin(values), top) if absolute else (-top, top)
            with np.errstate(all="ignore"):  # a span past float32's range
                edges = np.linspace(float(first), float(last), self.num_bins + 1)
            bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, self.num_bins - 1)
            hist = np.bincount(bins, minlength=self.num_bins)
            edges = edges.astype(x.dtype)
            return (hist, edges, low, high) if absolute else (hist, edges, low, high, top)

    return Collector


def entropy_threshold(histogram: tuple, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The range of one tensor that ORT's entropy calibrator picks
    (`HistogramCollector.get_entropy_threshold`, TensorRT's KL-divergence search), the same
    arithmetic with its inner loops as array operations: ORT sums each slice with Python's
    `sum`, which took over 15 minutes on the 519 tensors of the 1.5 MB PP-OCR classifier (here
    about 0.15 s a tensor). Scoring all thresholds at once as a matrix was no faster and, summing
    in another order, broke near-ties differently."""
    from onnxruntime.quantization.calibrate import smooth_distribution
    from scipy.special import rel_entr

    hist, edges, lowest, highest = histogram[:4]
    bins, zero, half = hist.size, hist.size // 2, levels // 2
    total = np.concatenate([[0], np.cumsum(hist)])
    best, best_kl = None, np.inf
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += total[start]  # the outliers go to the edge bins
        p[-1] += total[bins] - total[end]
        merged = sliced.size // levels
        cut = levels * merged
        quantized = sliced[:cut].reshape(levels, merged).sum(axis=1)
        quantized[-1] += sliced[cut:].sum()
        norm = (p[:cut] != 0).reshape(levels, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)  # ORT keeps q in integers: the quotient truncates
        q[:cut] = np.repeat(np.where(norm != 0, quantized / np.maximum(norm, 1), 0), merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        if p is None or q is None:
            kl = np.inf
        else:  # scipy.stats.entropy(p, q) without its checks, which took most of the time
            p, q = p / p.sum(keepdims=True), q / q.sum(keepdims=True)
            kl = float(np.array(rel_entr(p, q).sum(), dtype=edges.dtype))
        if best is None or kl < best_kl:  # the first of equal minima, as ORT's argmin
            best, best_kl = (edges[start], edges[end]), kl
    low, high = best
    return (lowest if low < lowest else low), (highest if high > highest else high)


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


# Ops ORT's QDQ quantizer takes whole (in INT8 they add no rounding of their own, or little):
# between INT8 nodes they go INT8 too, as in whole-model INT8. Normalizations, Softmax and the
# like are left out: they are where INT8 costs accuracy.
GLUE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool", "AveragePool",
                  "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                  "Concat", "Split", "Slice", "Pad", "Resize", "Add", "Mul"})


def enclosed(model, nodes: list[str]) -> list[str]:
    """`nodes` and the glue ops (GLUE) enclosed by them: those whose every activation input
    comes from the set and whose every output goes only into it. Quantized with the chosen
    nodes, they spare a Dequantize/Quantize pair at each (a MaxPool or residual Add between two
    INT8 convolutions), so that every region in INT8 builds what whole-model INT8 builds."""
    from collections import defaultdict

    constant = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n.name)
    outputs = {o.name for o in model.graph.output}
    inside = set(nodes)
    glue = [n for n in model.graph.node if n.op_type in GLUE and n.name and n.name not in inside]
    changed = True
    while changed:  # forward: glue fed only by the set
        changed = False
        for n in glue:
            acts = [i for i in n.input if i and i not in constant]
            if n.name not in inside and acts and all(producer.get(i) in inside for i in acts):
                inside.add(n.name)
                changed = True
    changed = True
    while changed:  # backward: and read only by it
        changed = False
        for n in glue:
            if n.name in inside and any(o in outputs or not consumers[o] or
                                        any(c not in inside for c in consumers[o])
                                        for o in n.output if o):
                inside.discard(n.name)
                changed = True
    return sorted(inside)


def quantize_nodes(model_path: Path, out: Path, q: "Quantization", nodes: list[str],
                   data_file: Path | None, work: Path) -> str:
    """Static INT8 QDQ of `nodes` and the glue they enclose (`enclosed`), checked afterwards.

    ORT's pre-processing optimizer renames nodes (`mm` becomes `mm/MatMulAddFusion`), so a list
    of names would silently match nothing: here it runs shape inference only, and every chosen
    node must come out fed by a DequantizeLinear, or the build fails with the names it missed.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    if data_file is None:
        raise ValueError("static quantization needs calibration data")
    model_path, readied = ready(model_path, work / "ready.onnx")
    source, note = model_path, "shape inference only"
    try:
        quant_pre_process(str(model_path), str(work / "inferred.onnx"), skip_optimization=True,
                          skip_symbolic_shape=True)
        source = work / "inferred.onnx"
    except Exception as exc:  # the tool raises bare Exceptions
        note = f"no shape inference ({type(exc).__name__})"
    glued = enclosed(onnx.load(str(source), load_external_data=False), list(nodes))
    _quantize(source, out, q, data_file, glued)
    quantized = onnx.load(str(out), load_external_data=False)
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    got = {n.name for n in quantized.graph.node if n.input and n.input[0] in dq_outputs}
    missed = [n for n in nodes if n not in got]
    if missed:
        raise ValueError(f"INT8 was chosen for {len(missed)} node(s) the quantizer left in float: "
                         f"{', '.join(missed[:3])}")
    extra = len(glued) - len(set(nodes))
    return _notes(f"INT8 at {len(nodes)} node(s)" + (f" and {extra} between them" if extra else ""),
                  note, readied)


def quantize_dynamic_nodes(model_path: Path, out: Path, nodes: list[str]) -> str:
    """Dynamic INT8 of exactly `nodes` (MatMul / Gemm): weights quantized ahead of time,
    activations at run time, so nothing is calibrated. Checked like `quantize_nodes`: every
    chosen node must come out as an integer MatMul fed by DynamicQuantizeLinear."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    model_path, readied = ready(model_path, out.with_name("ready.onnx"))
    ort_quantize_dynamic(str(model_path), str(out), weight_type=QuantType.QInt8,
                         nodes_to_quantize=list(nodes), op_types_to_quantize=["MatMul", "Gemm"])
    quantized = onnx.load(str(out), load_external_data=False)
    left = {n.name for n in quantized.graph.node if n.op_type in ("MatMul", "Gemm")}
    missed = [n for n in nodes if n in left]
    if missed:
        raise ValueError(f"dynamic INT8 was chosen for {len(missed)} node(s) the quantizer left "
                         f"in float: {', '.join(missed[:3])}")
    return _notes(f"dynamic INT8 at {len(nodes)} node(s)", readied)
