"""The site catalogue: every place in a graph where a choice can be made, with static features.

Sites are found on the model with its node names made unique and stable (`stable_names`), so
the same model gives the same sites and ids on every run. The Gymnasium observation and the
Optuna space are both built from this catalogue.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

QUANTIZABLE = ("Conv", "MatMul", "Gemm")
KINDS = ("fusion", "grouping", "layout", "precision")
# Structural rules in the order a plan applies them: fusions, then grouping, then layout.
STRUCTURAL = ("conv_bn", "layernorm", "matmul_add", "gemm_act", "gelu", "skip_layernorm",
              "attention", "silu", "conv_add", "conv_act", "transpose_pair", "transpose_matmul",
              "horizontal", "grouped_conv", "nchwc")
# rule -> its options; the first keeps the model as it is. A site may offer fewer.
RULES: dict[str, tuple[str, ...]] = {
    **{rule: ("keep", "apply") for rule in STRUCTURAL},
    "grouped_conv": ("keep", "g2", "g4"),
    "nchwc": ("keep", "nchwc"),  # ORT's blocked channel layout for one region
    # int8_dynamic: weights INT8 ahead of time, activations quantized at run time (MatMul/Gemm)
    "int8_node": ("fp32", "int8", "int8_dynamic"),
    "int8_region": ("fp32", "int8"),
    # float16 for GPU providers: listed so that plans can say it; the CPU provider runs it slower
    "fp16_region": ("fp32", "fp16"),
}


# Rewrites whose replacement nodes are still Conv / MatMul / Gemm, so INT8 can follow them.
KEEPS_QUANTIZABLE = frozenset({"conv_bn", "matmul_add", "grouped_conv", "horizontal"})


@dataclass(frozen=True)
class Site:
    id: str  # "<rule>:<anchor node name>"
    kind: str  # fusion | grouping | layout | precision
    rule: str
    options: tuple[str, ...]  # the first keeps the model as it is
    lossy: bool
    nodes: tuple[str, ...]  # the nodes it decides for
    features: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def default(self) -> str:
        return self.options[0]

    def conflicts(self, option: str, other: Site, other_option: str) -> bool:
        """Whether the two choices cannot both be made: two rewrites of one node, static and
        dynamic INT8 at one node, or INT8 at a node that a rewrite turns into an operator the
        quantizer does not take (FusedConv, ...)."""
        if not set(self.nodes) & set(other.nodes):
            return False
        precision = [s for s in (self, other) if s.kind == "precision"]
        if len(precision) == 2:  # an INT8 node inside an INT8 region: the union is quantized
            return option != other_option
        if len(precision) == 1:
            structural = other if precision[0] is self else self
            return structural.rule not in KEEPS_QUANTIZABLE
        return True


def stable_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gives every node a unique, deterministic name (empty or repeated names get
    `<op>_<index>`), in place. Plans name nodes; they must mean the same node every time."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def _bind_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy with the workload's input shapes fixed, for shape inference."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for inp in bound.graph.input:
        if inp.name in shapes:
            for dim, size in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                dim.Clear()
                dim.dim_value = size
    return shape_inference.infer_shapes(bound, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _node_features(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """FLOPs (multiply-adds x2) and bytes moved (float32 inputs + outputs), where shapes are known."""
    out_shape = shapes.get(node.output[0]) if node.output else None
    in_shapes = [shapes.get(i) for i in node.input if i]
    flops = 0
    if out_shape and node.op_type == "Conv" and len(in_shapes) > 1 and in_shapes[1]:
        w = in_shapes[1]  # (out_channels, in_channels / groups, kh, kw)
        flops = 2 * int(np.prod(out_shape)) * int(np.prod(w[1:]))
    elif out_shape and node.op_type in ("MatMul", "Gemm") and in_shapes and in_shapes[0]:
        k = in_shapes[0][-1] if node.op_type == "MatMul" else in_shapes[1][0] if in_shapes[1] else 0
        flops = 2 * int(np.prod(out_shape)) * int(k)
    moved = sum(int(np.prod(s)) for s in in_shapes if s) + (int(np.prod(out_shape)) if out_shape else 0)
    return {"op_types": [node.op_type], "flops": flops, "bytes": 4 * moved,
            "output_shape": list(out_shape) if out_shape else None}


def _regions(names: list[str]) -> list[list[str]]:
    """Groups quantizable nodes into regions decided together, so that Quantize/Dequantize pairs
    are not inserted between every pair of nodes. Exporters name nodes by module path
    (/layer1/layer1.0/conv1/Conv): the shallowest path depth that gives at least 6 groups of
    consecutive nodes is used; flat names fall back to runs of 4 consecutive nodes."""
    paths = [n.strip("/").split("/") for n in names]
    deepest = max((len(p) for p in paths), default=0)
    for depth in range(1, deepest):
        groups: list[list[str]] = []
        last = None
        for name, path in zip(names, paths):
            key = tuple(path[:depth]) if len(path) > depth else None
            if key is None or key != last:
                groups.append([])
            groups[-1].append(name)
            last = key
        if 6 <= len(groups) < len(names):
            return groups
    return [names[i:i + 4] for i in range(0, len(names), 4)]


def catalogue(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
              rules: set[str] | None = None,
              rejected: list[tuple[str, str, str]] | None = None) -> list[Site]:
    """The sites of `model` (its node names made stable first), limited to `rules` if given.

    Near misses are appended to `rejected` as (rule, node, reason) when a list is given."""
    model = stable_names(model)
    inferred = _shapes(_bind_inputs(model, shapes))
    nodes = list(model.graph.node)
    position = {n.name: i / max(len(nodes) - 1, 1) for i, n in enumerate(nodes)}
    producers = {o: n.name for n in nodes for o in n.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n.name)
    by_name = {n.name: n for n in nodes}

    def features(names: list[str]) -> dict[str, Any]:
        per = [_node_features(by_name[n], inferred) for n in names]
        first, last = by_name[names[0]], by_name[names[-1]]
        return {"op_types": sorted({t for f in per for t in f["op_types"]}),
                "nodes": len(names), "flops": sum(f["flops"] for f in per),
                "bytes": sum(f["bytes"] for f in per), "output_shape": per[-1]["output_shape"],
                "position": round(position[first.name], 4),
                "inputs_from": sorted({by_name[producers[i]].op_type for i in first.input
                                       if i in producers}),
                "outputs_to": sorted({by_name[c].op_type for o in last.output for c in consumers[o]})}

    sites: list[Site] = []
    wanted = [r for r in STRUCTURAL if rules is None or r in rules]
    if wanted:
        from autotune.rewrites import prepare, registry

        prepared, rewrites = prepare(model), registry()
        for rule in wanted:
            rw = rewrites[rule]
            for match in rw.find(prepared):
                names = [n for n in match.nodes if n in by_name]
                sites.append(Site(f"{rule}:{match.anchor}", rw.kind, rule,
                                  match.options or RULES[rule], rw.lossy, match.nodes,
                                  features(names)))
            if rejected is not None:
                rejected += [(rule, anchor, reason) for anchor, reason in rw.rejected(prepared)]
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in nodes if n.op_type == "Constant" for o in n.output}
    # Quantizing a MatMul of two activations (attention scores) rarely pays; weights do.
    quantizable = [n.name for n in nodes
                   if n.op_type in QUANTIZABLE and any(i in weights for i in n.input[1:2])]
    if rules is None or "int8_node" in rules:
        sites += [Site(f"int8_node:{name}", "precision", "int8_node",
                       RULES["int8_node"] if by_name[name].op_type != "Conv" else ("fp32", "int8"),
                       True, (name,), features([name])) for name in quantizable]
    if rules is None or "int8_region" in rules:
        sites += [Site(f"int8_region:{group[0]}", "precision", "int8_region", ("fp32", "int8"),
                       True, tuple(group), features(group)) for group in _regions(quantizable)]
    if rules is None or "fp16_region" in rules:
        # The same regions, with every node between their first and last Conv / MatMul, so
        # that float16 runs through the activations between them without Casts.
        index = {n.name: i for i, n in enumerate(nodes)}
        for group in _regions(quantizable):
            span = [n.name for n in nodes[index[group[0]]:index[group[-1]] + 1]]
            sites.append(Site(f"fp16_region:{group[0]}", "precision", "fp16_region",
                              RULES["fp16_region"], True, tuple(span),
                              {**features(span), "provider": "gpu"}))
    return sites


def compatible(chosen: list[tuple[Site, str]]) -> tuple[list[Site], list[tuple[Site, Site]]]:
    """Keeps each (site, option) unless it conflicts with one kept before it:
    (kept sites, [(dropped, because of)]). Choices are taken in the order given (the
    catalogue's, which is the order plans apply them in)."""
    kept: list[Site] = []
    by_node: dict[str, list[tuple[Site, str]]] = defaultdict(list)
    dropped = []
    for site, option in chosen:
        rival = next((k for n in site.nodes for k, o in by_node[n]
                      if site.conflicts(option, k, o)), None)
        if rival is not None:
            dropped.append((site, rival))
            continue
        kept.append(site)
        for n in site.nodes:
            by_node[n].append((site, option))
    return kept, dropped
