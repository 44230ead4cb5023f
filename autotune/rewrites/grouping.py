"""Horizontal grouping (lossless): sibling MatMul / Conv nodes that read the same tensor with
constant weights become one node over concatenated weights, followed by a Split.

        x                              x
      / | \\                            |
    Wq  Wk  Wv   (+ bias each)   ->  MatMul(x, [Wq|Wk|Wv]) (+ [bq|bk|bv])
     |   |   |                          |
     q   k   v                        Split -> q, k, v
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from autotune.rewrites import Match, Rewrite, rename, site_nodes


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant, also through Identity nodes (the torch exporter gives equal
    tensors one initializer and the others Identity nodes of it: resnet50's zero biases)."""
    while value is not None and value.const_value is None and value.producer() is not None \
            and value.producer().op_type == "Identity":
        value = value.producer().inputs[0]
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _bias_add(node: ir.Node) -> tuple[ir.Node, np.ndarray] | None:
    """The Add that only adds a constant bias to this node's output, if any."""
    out = node.outputs[0]
    users = list(out.uses())
    if len(users) != 1 or out.is_graph_output():
        return None
    add = users[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    bias = _const(other)
    return (add, bias) if bias is not None and bias.ndim == 1 else None


def _signature(node: ir.Node) -> tuple | None:
    """Nodes with equal signatures can be merged; None: this node cannot be."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    w = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None
    if node.op_type == "MatMul" and w.ndim == 2:
        return ("MatMul", w.shape[0], str(w.dtype))
    if node.op_type == "Conv" and w.ndim == 4:
        attrs = tuple(sorted((k, str(v.value)) for k, v in node.attributes.items()))
        if node.attributes.get_int("group", 1) != 1:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and _const(node.inputs[2]) is None:
            return None  # a bias computed at run time
        return ("Conv", w.shape[1:], str(w.dtype), attrs)
    return None


def _groups(model: ir.Model) -> list[list[ir.Node]]:
    by_input: dict[tuple, list[ir.Node]] = defaultdict(list)
    for node in model.graph:
        sig = _signature(node)
        if sig is not None:
            by_input[(id(node.inputs[0]), sig)].append(node)
    return [nodes for nodes in by_input.values() if len(nodes) > 1]


def find(model: ir.Model) -> list[Match]:
    found = []
    for nodes in _groups(model):
        adds = [_bias_add(n) for n in nodes] if nodes[0].op_type == "MatMul" else []
        extra = tuple(a[0].name for a in adds if a) if adds and all(adds) else ()
        found.append(Match(nodes[0].name, tuple(n.name for n in nodes) + extra))
    return found


def rejected(model: ir.Model) -> list[tuple[str, str]]:
    """Siblings with weights over one input that cannot be merged, and why."""
    by_input: dict[int, list[ir.Node]] = defaultdict(list)
    for node in model.graph:
        if node.op_type in ("MatMul", "Conv") and len(node.inputs) > 1 and _const(node.inputs[1]) is not None:
            by_input[id(node.inputs[0])].append(node)
    out = []
    for nodes in by_input.values():
        if len(nodes) < 2:
            continue
        sigs = {_signature(n) for n in nodes}
        if None in sigs:
            out.append((nodes[0].name, "a sibling is grouped or has weights of another rank"))
        elif len(sigs) > 1 and len({s for s in sigs}) == len(nodes):
            out.append((nodes[0].name, "siblings differ in operator, kernel, stride or padding"))
    return out


def apply(model: ir.Model, site: Match, option: str = "apply") -> list[ir.Node]:
    graph = model.graph
    found = site_nodes(model, site, "horizontal")
    nodes = [n for n in found if n.op_type in ("MatMul", "Conv")]
    adds = [n for n in found if n.op_type == "Add"]
    x = nodes[0].inputs[0]
    weights = [_const(n.inputs[1]) for n in nodes]
    conv = nodes[0].op_type == "Conv"
    axis = 0 if conv else 1  # output channels of Conv weights, columns of MatMul weights
    sizes = [w.shape[axis] for w in weights]
    prefix = f"{site.anchor}/horizontal"

    def constant(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        graph.register_initializer(value)
        return value

    w_cat = constant(f"{prefix}.weight", np.concatenate(weights, axis=axis))
    new_nodes: list[ir.Node] = []
    if conv:
        biases = [(_const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None
                   else np.zeros(s, weights[0].dtype)) for n, s in zip(nodes, sizes)]
        b_cat = constant(f"{prefix}.bias", np.concatenate(biases))
        merged = ir.Node("", "Conv", [x, w_cat, b_cat], attributes=list(nodes[0].attributes.values()))
        new_nodes.append(merged)
        replaced = [n.outputs[0] for n in nodes]
        split_axis = 1
    else:
        merged = ir.Node("", "MatMul", [x, w_cat])
        new_nodes.append(merged)
        replaced = [n.outputs[0] for n in nodes]
        if adds:
            biases = [_bias_add(n)[1] for n in nodes]
            b_cat = constant(f"{prefix}.bias", np.concatenate(biases))
            merged = ir.Node("", "Add", [merged.outputs[0], b_cat])
            new_nodes.append(merged)
            replaced = [_bias_add(n)[0].outputs[0] for n in nodes]
        split_axis = -1
    split_sizes = constant(f"{prefix}.split", np.array(sizes, dtype=np.int64))
    split = ir.Node("", "Split", [merged.outputs[0], split_sizes], num_outputs=len(nodes),
                    attributes=[ir.AttrInt64("axis", split_axis)])
    new_nodes.append(split)
    for old, new in zip(replaced, split.outputs):
        new.name, new.shape, new.type = f"{old.name}", old.shape, old.type
        old.name = f"{old.name}/replaced"
        outputs = graph.outputs
        for i, out in enumerate(outputs):
            if out is old:
                outputs[i] = new
        ir.convenience.replace_all_uses_with(old, new)
    first = min(nodes, key=lambda n: list(graph).index(n))
    graph.insert_before(first, new_nodes)
    graph.remove([*adds, *nodes], safe=True)
    rename(new_nodes, site.anchor, "horizontal")
    return new_nodes


GROUPS = (2, 4)


def find_grouped(model: ir.Model) -> list[Match]:
    found = []
    for node in model.graph:
        w = _const(node.inputs[1]) if node.op_type == "Conv" and len(node.inputs) > 1 else None
        if w is None or w.ndim != 4 or node.attributes.get_int("group", 1) != 1:
            continue
        cout, cin = w.shape[:2]
        options = tuple(f"g{g}" for g in GROUPS if cin % g == 0 and cout % g == 0 and cin // g >= 4)
        if options:
            found.append(Match(node.name, (node.name,), ("keep", *options)))
    return found


def rejected_grouped(model: ir.Model) -> list[tuple[str, str]]:
    out = []
    for node in model.graph:
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1:
            out.append((node.name, "already grouped"))
    return out


def apply_grouped(model: ir.Model, site: Match, option: str) -> list[ir.Node]:
    """Keeps the block-diagonal part of the weights: output block g sees input block g only."""
    node = next((n for n in model.graph if n.name == site.anchor), None)
    if node is None:
        raise ValueError(f"grouped_conv site {site.anchor}: its node is gone")
    groups = int(option[1:])
    w = _const(node.inputs[1])
    cout, cin = w.shape[:2]
    co, ci = cout // groups, cin // groups
    blocks = [w[g * co:(g + 1) * co, g * ci:(g + 1) * ci] for g in range(groups)]
    name = f"{site.anchor}/grouped_conv.weight"
    value = ir.Value(name=name, const_value=ir.tensor(np.concatenate(blocks, 0), name=name))
    model.graph.register_initializer(value)
    node.replace_input_with(1, value)
    node.attributes["group"] = ir.AttrInt64("group", groups)
    return [node]


REWRITES = [
    Rewrite("horizontal", "grouping", False, find, apply,
            "sibling MatMul / Conv nodes over one input merged, then Split", rejected),
    Rewrite("grouped_conv", "grouping", True, find_grouped, apply_grouped,
            "a dense Conv as a grouped Conv keeping its block-diagonal weights (lossy)",
            rejected_grouped, options=("keep", "g2", "g4")),
]
