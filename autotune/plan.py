"""Plans: one choice for every decision the tuner can make, as plain data with a stable hash.

`apply(plan, workload, out_dir)` builds the candidate: a model file and the ONNX Runtime session
settings to run it with (the `session.json` of a tuned-model directory).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autotune.errors import UsageError, did_you_mean

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT",
              "all": "ORT_ENABLE_ALL"}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
CALIBRATIONS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("int8", "uint8")


class InvalidPlan(UsageError):
    """A combination of choices that cannot be built; search strategies skip it."""


@dataclass(frozen=True)
class RuntimeChoices:
    """How ONNX Runtime runs the model. The defaults are ORT's own: the baseline."""

    graph_optimization_level: str = "all"
    disabled_optimizers: tuple[str, ...] = ()
    intra_op_threads: int = 0  # 0: ORT's default (one per physical core)
    inter_op_threads: int = 0
    execution_mode: str = "sequential"
    enable_mem_arena: bool = True
    enable_mem_pattern: bool = True
    execution_provider: str = "cpu"  # autotune.providers: cpu, openvino, cuda, tensorrt
    # The provider's options where they are not its own defaults: (option, value), sorted.
    provider_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from autotune import providers

        _one_of("graph_optimization_level", self.graph_optimization_level, OPT_LEVELS)
        _one_of("execution_mode", self.execution_mode, EXECUTION_MODES)
        object.__setattr__(self, "disabled_optimizers", tuple(sorted(set(self.disabled_optimizers))))
        provider = providers.get(self.execution_provider)
        options = dict(self.provider_options.items() if isinstance(self.provider_options, dict)
                       else self.provider_options)
        for option, value in options.items():
            provider.check(option, value)
        object.__setattr__(self, "provider_options", tuple(sorted(
            (k, v) for k, v in options.items() if v != provider.options[k][0])))
        for name in ("intra_op_threads", "inter_op_threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise UsageError(f"plan: {name} must be an integer >= 0, got {getattr(self, name)!r}")


QUANT_MODES = ("static", "dynamic")


@dataclass(frozen=True)
class Quantization:
    """INT8 through onnxruntime.quantization: static in QDQ format (calibrated on the
    workload's calibration data), or dynamic (weights ahead of time, activations at run time;
    calibration and activation type do not apply)."""

    mode: str = "static"
    per_channel: bool = True
    calibration: str = "minmax"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = False

    def __post_init__(self) -> None:
        _one_of("quantization mode", self.mode, QUANT_MODES)
        _one_of("calibration", self.calibration, CALIBRATIONS)
        _one_of("activation_type", self.activation_type, QUANT_TYPES)
        _one_of("weight_type", self.weight_type, QUANT_TYPES)
        if self.mode == "dynamic":  # nothing calibrated; ORT picks the activation type: one plan
            object.__setattr__(self, "calibration", "minmax")
            object.__setattr__(self, "activation_type", "uint8")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise InvalidPlan("plan: int8 activations with uint8 weights is a combination ORT's "
                              "quantizer does not support")


@dataclass(frozen=True)
class Plan:
    """Runtime choices, quantization settings, and one option per site where it is not the
    site's default. Whole-model INT8 is `quantization` with no precision site chosen; choosing
    precision sites restricts INT8 to their nodes (with `quantization`'s settings, or the
    defaults)."""

    runtime: RuntimeChoices = field(default_factory=RuntimeChoices)
    quantization: Quantization | None = None
    sites: tuple[tuple[str, str], ...] = ()  # (site id, option), sorted

    def __post_init__(self) -> None:
        sites = dict(self.sites.items() if isinstance(self.sites, dict) else self.sites)
        object.__setattr__(self, "sites", tuple(sorted(sites.items())))

    @property
    def int8_sites(self) -> list[str]:
        """Sites computed in static INT8 (QDQ)."""
        return [sid for sid, option in self.sites if option == "int8"]

    @property
    def dynamic_sites(self) -> list[str]:
        """MatMul / Gemm sites with INT8 weights and activations quantized at run time."""
        return [sid for sid, option in self.sites if option == "int8_dynamic"]

    @property
    def fp16_sites(self) -> list[str]:
        """Regions computed in float16 (for GPU providers; the CPU provider runs them slower)."""
        return [sid for sid, option in self.sites if option == "fp16"]

    @property
    def is_baseline(self) -> bool:
        return self == Plan()

    @property
    def lossy(self) -> bool:
        """Whether the plan may change the model's outputs (INT8, grouped convolutions)."""
        from autotune import providers

        r = self.runtime
        return (self.quantization is not None or bool(self.int8_sites) or bool(self.dynamic_sites)
                or bool(self.fp16_sites) or any(sid.startswith("grouped_conv:") for sid, _ in self.sites)
                or providers.get(r.execution_provider).is_lossy(dict(r.provider_options)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runtime"]["disabled_optimizers"] = list(self.runtime.disabled_optimizers)
        d["runtime"]["provider_options"] = dict(self.runtime.provider_options)
        if self.runtime.execution_provider == "cpu":  # as plans were before providers: same digest
            del d["runtime"]["execution_provider"], d["runtime"]["provider_options"]
        d["sites"] = dict(self.sites)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        _known(d, cls, "plan")
        runtime = dict(d.get("runtime") or {})
        _known(runtime, RuntimeChoices, "plan.runtime")
        runtime["disabled_optimizers"] = tuple(runtime.get("disabled_optimizers", ()))
        runtime["provider_options"] = tuple((runtime.get("provider_options") or {}).items())
        quant = d.get("quantization")
        if quant is not None:
            _known(quant, Quantization, "plan.quantization")
        return cls(RuntimeChoices(**runtime), Quantization(**quant) if quant is not None else None,
                   tuple((d.get("sites") or {}).items()))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        """A short human summary, e.g. 'INT8 static per-channel minmax, level all'."""
        parts = []
        applied = [sid.split(":", 1)[0] + ("" if option == "apply" else f"={option}")
                   for sid, option in self.sites if option not in ("int8", "int8_dynamic", "fp16", "fp32")]
        for rule in sorted(set(applied)):
            parts.append(f"{rule} x{applied.count(rule)}")
        if self.int8_sites:
            rules = sorted({sid.split(":", 1)[0] for sid in self.int8_sites})
            parts.append(f"INT8 at {len(self.int8_sites)} site(s) ({', '.join(rules)})")
        if self.dynamic_sites:
            parts.append(f"dynamic INT8 at {len(self.dynamic_sites)} site(s)")
        if self.fp16_sites:
            parts.append(f"FP16 at {len(self.fp16_sites)} region(s)")
        if self.quantization and self.quantization.mode == "dynamic":
            q = self.quantization
            parts.append(f"INT8 dynamic {'per-channel' if q.per_channel else 'per-tensor'} "
                         f"(w {q.weight_type}{', reduce_range' if q.reduce_range else ''})")
        elif self.quantization and not self.int8_sites:
            q = self.quantization
            parts.append(f"INT8 static {'per-channel' if q.per_channel else 'per-tensor'} "
                         f"{q.calibration} (act {q.activation_type}, w {q.weight_type}"
                         f"{', reduce_range' if q.reduce_range else ''})")
        r, default = self.runtime, RuntimeChoices()
        if r.execution_provider != default.execution_provider:
            options = "".join(f", {k}={v}" for k, v in r.provider_options)
            parts.insert(0, f"{r.execution_provider} provider{options}")
        for f in fields(r):
            if f.name in ("execution_provider", "provider_options"):
                continue
            if getattr(r, f.name) != getattr(default, f.name):
                value = getattr(r, f.name)
                parts.append(f"{f.name}={','.join(value) if isinstance(value, tuple) else value}")
        return "; ".join(parts) or "ORT_ENABLE_ALL defaults (the baseline)"


def _one_of(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"plan: {name} `{value}` is not one of {', '.join(allowed)}."
                         f"{did_you_mean(str(value), allowed)}")


def _known(d: dict, cls: type, where: str) -> None:
    names = {f.name for f in fields(cls)}
    for key in d:
        if key not in names:
            raise UsageError(f"{where}: unknown field `{key}`.{did_you_mean(key, names)}")


def session_settings(runtime: RuntimeChoices) -> dict[str, Any]:
    """The session.json content for these runtime choices: every SessionOptions field we set,
    and the providers with their options (`autotune.runtime.create_session` reads them)."""
    from autotune import providers

    provider = providers.get(runtime.execution_provider)
    chosen = {"providers": ["CPUExecutionProvider"], "provider_options": [{}]}
    if provider.name != "cpu":
        chosen = {"providers": [provider.ep, "CPUExecutionProvider"],
                  "provider_options": [providers.ort_options(provider.name,
                                                             dict(runtime.provider_options)), {}],
                  "requires": provider.install}
    return {
        "graph_optimization_level": OPT_LEVELS[runtime.graph_optimization_level],
        "disabled_optimizers": list(runtime.disabled_optimizers),
        "intra_op_num_threads": runtime.intra_op_threads,
        "inter_op_num_threads": runtime.inter_op_threads,
        "execution_mode": EXECUTION_MODES[runtime.execution_mode],
        "enable_mem_arena": runtime.enable_mem_arena,
        "enable_mem_pattern": runtime.enable_mem_pattern,
        "config_entries": {},
        **chosen,
    }


@dataclass(frozen=True)
class Candidate:
    """A built plan: the model file, the session settings to run it with, and build notes."""

    model: Path
    settings: dict[str, Any]
    note: str | None = None


def apply(plan: Plan, model_path: Path, data_file: Path | None, out_dir: Path,
          shapes: dict[str, tuple[int, ...]] | None = None) -> Candidate:
    """Builds the candidate of `plan` under `out_dir` from the original model.

    `data_file` is the workload's data (.npz); quantization calibrates on its calibration part.
    `shapes` (the workload's bound input shapes) are needed to find sites.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    note = None
    if plan.sites:
        note = _apply_sites(plan, model_path, data_file, out_dir, shapes or {})
    elif plan.quantization is None:
        import shutil

        shutil.copyfile(model_path, target)
    else:
        note = _quantize_whole(plan.quantization, model_path, target, data_file, out_dir)
    return Candidate(target, session_settings(plan.runtime), note)


def _quantize_whole(q: Quantization, model_path: Path, target: Path, data_file: Path | None,
                    work: Path) -> str:
    from autotune.quantize import quantize_dynamic, quantize_static

    if q.mode == "dynamic":
        return quantize_dynamic(model_path, target, q)
    return quantize_static(model_path, target, q, data_file, work)


def _apply_sites(plan: Plan, model_path: Path, data_file: Path | None, out_dir: Path,
                 shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Structural rewrites first (in catalogue order: fusion, grouping, layout), then FP16,
    static INT8 and dynamic INT8 at the chosen nodes, each followed through the rewrites that
    replaced them; whole-model INT8 (`quantization` with no precision site) last."""
    import onnx

    from autotune import sites as catalogue

    model = catalogue.stable_names(onnx.load(str(model_path)))
    found = catalogue.catalogue(model, shapes)
    known = {s.id: s for s in found}
    for sid, option in plan.sites:
        if sid not in known:
            raise UsageError(f"plan: the model has no site `{sid}`.{did_you_mean(sid, known)}")
        if option not in known[sid].options:
            raise UsageError(f"plan: site `{sid}` has no option `{option}` "
                             f"(options: {', '.join(known[sid].options)})")
    chosen = dict(plan.sites)
    _, clashes = catalogue.compatible([(s, chosen[s.id]) for s in found if s.id in chosen])
    if clashes:
        site, rival = clashes[0]
        raise InvalidPlan(f"plan: sites `{rival.id}` and `{site.id}` both change node "
                          f"{sorted(set(site.nodes) & set(rival.nodes))[0]}; choose one")
    structural = [s for s in found if s.rule in catalogue.STRUCTURAL
                  and chosen.get(s.id, s.default) != s.default]
    notes, replaced = [], {}
    if structural:
        model, replaced = _rewrite(model, structural, chosen)
        notes.append(f"{len(structural)} rewrite(s)")

    def followed(site_ids: list[str], keep=lambda op: op in catalogue.QUANTIZABLE) -> list[str]:
        """The nodes of these sites, followed through the rewrites that replaced them."""
        nodes = set()
        for sid in site_ids:
            for name in known[sid].nodes:
                nodes |= ({n for n, op in replaced[name] if keep(op)} if name in replaced
                          else {name})
        return sorted(nodes)

    fp16 = followed(plan.fp16_sites, keep=lambda op: True)
    static, dynamic = followed(plan.int8_sites), followed(plan.dynamic_sites)
    both = set(static) & set(dynamic)
    if both:  # siblings chosen static and dynamic, merged into one node by `horizontal`
        dynamic = [n for n in dynamic if n not in both]
        notes.append(f"static INT8 at {len(both)} merged node(s) also chosen dynamic")
    if fp16:
        model = _float16(model, set(fp16))
        notes.append(f"FP16 at {len(fp16)} node(s)")
    from autotune.quantize import quantize_dynamic_nodes, quantize_nodes

    current = out_dir / "named.onnx"
    onnx.save(model, str(current))
    if static:
        notes.append(quantize_nodes(current, out_dir / "static.onnx",
                                    plan.quantization or Quantization(), static, data_file, out_dir))
        current = out_dir / "static.onnx"
    if dynamic:
        notes.append(quantize_dynamic_nodes(current, out_dir / "dynamic.onnx", dynamic))
        current = out_dir / "dynamic.onnx"
    if plan.quantization is not None and not (fp16 or static or dynamic):  # whole-model INT8
        notes.append(_quantize_whole(plan.quantization, current, out_dir / "whole.onnx",
                                     data_file, out_dir))
        current = out_dir / "whole.onnx"
    current.replace(out_dir / "model.onnx")
    return "; ".join(notes) or None


def _rewrite(model, sites, chosen: dict[str, str]):
    """The model with the structural `sites` applied at their chosen options, in order, and
    {old node: [(new node, op type)]} for the nodes they replaced."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    from autotune.rewrites import Match, prepare, registry

    prepared, rewrites = prepare(model), registry()
    replaced: dict[str, list[tuple[str, str]]] = {}
    for site in sites:
        anchor = site.id.split(":", 1)[1]
        new = rewrites[site.rule].apply(prepared, Match(anchor, site.nodes), chosen[site.id])
        for old in site.nodes:
            replaced[old] = [(n.name, n.op_type) for n in new]
    RemoveUnusedNodesPass()(prepared)  # cleanup: weights the rewrites made unused
    model = ir.serde.serialize_model(prepared)
    # The shapes inferred for matching are not part of the candidate: written out as
    # value_info they made ORT run the transformer encoder about 5% slower.
    del model.graph.value_info[:]
    return model, replaced


def _float16(model, nodes: set[str]):
    """`nodes` computed in float16 (ORT's converter), inputs and outputs kept in float32."""
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        model, keep_io_types=True,
        node_block_list=[n.name for n in model.graph.node if n.name not in nodes])
    converted = ir.serde.deserialize_model(model)
    converted.graph.sort()  # the converter appends its Casts at the end of the graph
    return ir.serde.serialize_model(converted)
