"""A cheap latency estimate for precision Plans, from per-node costs measured once per model.

In the spirit of TASO's measured per-operator cost model: ONNX Runtime's profiler times every
kernel of the FP32 model and of its all-INT8 (static QDQ) variant, both as ORT_ENABLE_ALL runs
them, and a Plan's latency is estimated as

    the kernels no Conv / MatMul / Gemm owns (FP32)
    + each quantizable node at its FP32 or INT8 cost, as the Plan computes it
    + a QuantizeLinear where an INT8 node reads from FP32, a DequantizeLinear where FP32 reads
      from INT8, at the per-element costs the INT8 profile shows.

Kernels are attributed to the model's nodes by name: ORT keeps a node's name, or starts a fused
node's name with it. Only precision is modelled: runtime settings and structural rewrites leave
the estimate as it is. It is for shaping rewards and pre-training; real measurements decide what
is kept. `benchmarks/estimator.py` reports its rank correlation with measured latency.
"""
from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotune.plan import Plan

PROFILE_VERSION = 3
_TRANSITIONS = ("QuantizeLinear", "DequantizeLinear")
# Element-wise ops ORT fuses into the Conv / MatMul before them (or, in INT8, runs as QLinear
# ops beside it): their kernels are charged to that node.
_FUSED_AFTER = {"Relu", "Clip", "Add", "Sum", "BatchNormalization", "Sigmoid", "Mul", "HardSigmoid",
                "HardSwish", "LeakyRelu", "Tanh"}


@dataclass
class Profile:
    """Per-node costs in microseconds per inference, and the graph between quantizable nodes."""

    fp32: dict[str, float]  # quantizable node -> its kernels' time in the FP32 model
    int8: dict[str, float]  # quantizable node -> its kernels' time in the all-INT8 model
    other: float  # FP32 kernels no quantizable node owns
    other_int8: float  # the same in the all-INT8 model, Quantize/Dequantize aside
    int8_s8: dict[str, float]  # the same as int8, with signed (int8) activations
    other_int8_s8: float
    transition_us_per_element: float  # a Quantize or Dequantize between FP32 and INT8 nodes
    inputs: dict[str, int]  # quantizable node -> elements of its activation input
    outputs: dict[str, int]  # quantizable node -> elements of its output
    upstream: dict[str, list[str]]  # nearest quantizable nodes before it ("" for a graph input)
    downstream: dict[str, list[str]]  # nearest quantizable nodes after it ("" for an output)

    def to_json(self) -> str:
        return json.dumps({"version": PROFILE_VERSION, **asdict(self)})

    def estimate_us(self, int8: set[str], activations: str = "uint8") -> float:
        """Estimated microseconds per inference with `int8` nodes in INT8 (`activations`: the
        activation type, uint8 or int8, whose kernels differ in speed), the rest FP32."""
        signed = activations == "int8"
        costs = self.int8_s8 if signed else self.int8
        total = sum(costs[n] if n in int8 else self.fp32[n] for n in self.fp32)
        converted = sum(self.fp32[n] for n in int8) / max(sum(self.fp32.values()), 1e-9)
        other_int8 = self.other_int8_s8 if signed else self.other_int8
        total += self.other + converted * (other_int8 - self.other)
        return total + self.transition_us_per_element * self.transition_elements(int8)

    def transition_elements(self, int8: set[str]) -> int:
        """Elements quantized or dequantized where INT8 nodes meet FP32 ones (or the graph)."""
        elements = 0
        for n in int8:
            if any(u not in int8 for u in self.upstream[n]):  # reads FP32: quantize first
                elements += self.inputs[n]
            if any(d not in int8 for d in self.downstream[n]):  # read by FP32: dequantize after
                elements += self.outputs[n]
        return elements


def _kernel_times(model: Path, feed: dict[str, np.ndarray], runs: int) -> list[tuple[str, str, float, int]]:
    """(node name, op type, microseconds per run, output elements) of every kernel, as the
    ORT_ENABLE_ALL session runs `model`, averaged over `runs` runs after two of warm-up."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory(prefix="autotune-profile-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "profile")
        warm = ort.InferenceSession(str(model), ort.SessionOptions(), providers=["CPUExecutionProvider"])
        for _ in range(2):
            warm.run(None, feed)
        so.enable_profiling = True
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        elements = sum(int(np.prod(list(shape.values())[0])) for shape in
                       args.get("output_type_shape", []) if shape and list(shape.values())[0])
        key = (ev["name"][:-len("_kernel_time")], args.get("op_name", ""))
        total[key][0] += ev["dur"]
        total[key][1] = elements
    return [(name, op, us / runs, elements) for (name, op), (us, elements) in total.items()]


class _Attribution:
    """Charges ORT's kernels to the model's quantizable nodes, by the names ORT gives them: a
    node's own name, the name with a suffix (`_token_41` for a QLinearConv, `_nchwc`), a fused
    node's first node (`<node>/<Fusion>`, `fused <node>`), or the tensor a fused kernel writes
    (NCHWc convolutions are named after their output, a fused Relu's). From such a node, fused
    element-wise ops (Relu, Add, BatchNormalization, ...) lead back to the Conv / MatMul / Gemm
    they were fused into."""

    def __init__(self, model, quantizable: list[str]) -> None:
        self.nodes = {n.name: n for n in model.graph.node}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.quantizable = set(quantizable)

    def node(self, name: str):
        while name.startswith("fused "):
            name = name[len("fused "):]
        for candidate in (name, re.sub(r"(_token_\d+|_nchwc)$", "", name)):
            if candidate in self.nodes:
                return self.nodes[candidate]
            if candidate in self.producer:
                return self.producer[candidate]
        prefix = max((n for n in self.nodes if name.startswith(n)), key=len, default=None)
        return self.nodes[prefix] if prefix else None

    def owner(self, name: str, charged: dict[str, float]) -> str | None:
        """The quantizable node the kernel `name` belongs to; of two (an Add after two
        convolutions), the one not charged yet."""
        frontier = [n] if (n := self.node(name)) is not None else []
        for _ in range(4):
            found = [n.name for n in frontier if n.name in self.quantizable]
            if found:
                return next((f for f in found if f not in charged), found[0])
            frontier = [self.producer[i] for n in frontier if n.op_type in _FUSED_AFTER
                        for i in n.input if i in self.producer]
        return None

    def charge(self, kernels) -> tuple[dict[str, float], float]:
        """{quantizable node: microseconds} and the microseconds of the other kernels, Quantize
        and Dequantize aside."""
        costs: dict[str, float] = defaultdict(float)
        other = 0.0
        for name, op, us, _ in sorted(kernels, key=lambda k: k[1] in _FUSED_AFTER):
            if op in _TRANSITIONS:
                continue
            owner = self.owner(name, costs)
            if owner is None:
                other += us
            else:
                costs[owner] += us
        return costs, other


def profile(workload, runs: int = 20) -> Profile:
    """Profiles the workload's model in FP32 and all-INT8 (cached per model, data and ORT)."""
    import onnx
    import onnxruntime

    from autotune.paths import cache_dir

    path = cache_dir() / "estimator" / f"{workload.digest()}-ort{onnxruntime.__version__}-v{PROFILE_VERSION}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        d.pop("version")
        return Profile(**d)
    from autotune.plan import Quantization, apply
    from autotune.quantize import quantize_nodes
    from autotune.sites import _bind_inputs, _shapes, stable_names

    model = stable_names(onnx.load(str(workload.model_path)))
    shapes = _shapes(_bind_inputs(model, workload.shapes))
    weights = {i.name for i in model.graph.initializer}
    quantizable = [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                   and any(i in weights for i in n.input[1:2])]
    with np.load(workload.data_file()) as f:
        feed = {k[5:]: f[k][0] for k in f.files if k.startswith("eval:")}
    attribution = _Attribution(model, quantizable)
    with tempfile.TemporaryDirectory(prefix="autotune-profile-") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, named)
        fp32, other = attribution.charge(_kernel_times(named, feed, runs))
        built = apply(Plan(quantization=Quantization(mode="static")), named, workload.data_file(),
                      Path(tmp) / "int8", workload.shapes)
        int8, other_int8 = attribution.charge(_kernel_times(built.model, feed, runs))
        built = apply(Plan(quantization=Quantization(mode="static", activation_type="int8")),
                      named, workload.data_file(), Path(tmp) / "int8-s8", workload.shapes)
        int8_s8, other_int8_s8 = attribution.charge(_kernel_times(built.model, feed, runs))
        # Every other node in INT8: many transitions, whose cost per element is what the
        # kernels' total leaves over the per-node costs.
        checker = sorted(quantizable[::2])
        if len(quantizable) > 1:
            quantize_nodes(named, Path(tmp) / "checker.onnx", Quantization(), checker,
                           workload.data_file(), Path(tmp))
            mixed = sum(k[2] for k in _kernel_times(Path(tmp) / "checker.onnx", feed, runs))
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in model.graph.output}
    q = set(quantizable)

    def walk(start: list[str], step) -> list[str]:
        found, seen, todo = set(), set(), list(start)
        while todo:
            tensor = todo.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            nxt = step(tensor)
            if nxt is None:
                found.add("")
            for n in nxt or ():
                if n.name in q:
                    found.add(n.name)
                else:
                    todo += list(n.input if step is back else n.output)
        return sorted(found)

    def back(tensor):
        n = producer.get(tensor)
        return None if n is None and tensor not in weights else ([n] if n is not None else [])

    def forward(tensor):
        after = consumers.get(tensor, [])
        return None if tensor in outputs and not after else after

    by_name = {n.name: n for n in nodes}
    p = Profile(
        fp32={n: fp32.get(n, 0.0) for n in quantizable},
        int8={n: int8.get(n, fp32.get(n, 0.0)) for n in quantizable},
        other=other, other_int8=other_int8, transition_us_per_element=0.0,
        int8_s8={n: int8_s8.get(n, fp32.get(n, 0.0)) for n in quantizable},
        other_int8_s8=other_int8_s8,
        inputs={n: int(np.prod(shapes.get(by_name[n].input[0], (0,)))) for n in quantizable},
        outputs={n: int(np.prod(shapes.get(by_name[n].output[0], (0,)))) for n in quantizable},
        upstream={n: walk([by_name[n].input[0]], back) for n in quantizable},
        downstream={n: walk(list(by_name[n].output), forward) for n in quantizable})
    if len(quantizable) > 1 and (elements := p.transition_elements(set(checker))):
        p.transition_us_per_element = max(0.0, (mixed - p.estimate_us(set(checker))) / elements)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(p.to_json())
    return p


class Estimator:
    """Estimated latency (ms) and speedup over the baseline of a Plan, from a Profile."""

    def __init__(self, profile: Profile, sites: list[Any] = ()) -> None:
        self.p = profile
        self.site_nodes = {s.id: s.nodes for s in sites}
        self.baseline_us = profile.estimate_us(set())

    def int8_nodes(self, plan: Plan) -> set[str]:
        if plan.quantization is not None and plan.quantization.mode == "static" and not plan.sites:
            return set(self.p.fp32)
        return {n for sid in plan.int8_sites for n in self.site_nodes.get(sid, ())
                if n in self.p.fp32}

    def _us(self, plan: Plan) -> float:
        activations = plan.quantization.activation_type if plan.quantization else "uint8"
        return self.p.estimate_us(self.int8_nodes(plan), activations)

    def latency_ms(self, plan: Plan) -> float:
        return self._us(plan) / 1000

    def speedup(self, plan: Plan) -> float:
        return self.baseline_us / max(self._us(plan), 1e-9)


class Correction:
    """What timings teach the estimator about one model: the log of measured over estimated
    speedup, as a sum of one term per INT8 region, fitted by ridge regression (every term 0
    until a timing says otherwise, and never more than the timings support).

    Where the estimator misjudges a region (a Quantize/Dequantize pair at its border that costs
    more than the profile shows, a kernel that runs differently beside others), the plans timed
    with it carry the error, and plans with it are ranked by what was measured."""

    def __init__(self, ridge: float = 1.0) -> None:
        self.ridge = ridge
        self.seen: dict[frozenset, float] = {}  # regions in INT8 -> log(measured / estimated)
        self.terms: dict[str, float] = {}

    def observe(self, regions, measured: float, estimated: float) -> None:
        """A timed plan with `regions` in INT8: its measured and estimated speedups."""
        self.seen[frozenset(regions)] = float(np.log(measured / estimated))
        keys = sorted(set().union(*self.seen))
        x = np.array([[k in plan for k in keys] for plan in self.seen], dtype=float)
        y = np.array(list(self.seen.values()))
        # the ridge solution in its dual form: as many equations as timings, not regions
        dual = np.linalg.solve(x @ x.T + self.ridge * np.eye(len(y)), y)
        self.terms = dict(zip(keys, x.T @ dual))

    def factor(self, regions) -> float:
        """Multiply the estimated speedup of a plan with `regions` in INT8 by this."""
        return float(np.exp(sum(self.terms.get(k, 0.0) for k in regions)))
