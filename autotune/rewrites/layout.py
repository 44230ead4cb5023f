"""Layout (lossless): a region of convolutions in ONNX Runtime's blocked NCHWc layout.

ONNX Runtime's CPU provider keeps activations in NCHWc (channels in blocks of 8 with AVX2, 16
with AVX-512) with its ``com.microsoft.nchwc`` kernels: Conv with a fused activation and sum,
the poolings, ReorderInput / ReorderOutput. Its ``NchwcTransformer`` converts the whole model
at ``ORT_ENABLE_LAYOUT`` and above; this rewrite converts one region, by handing the region to
ONNX Runtime as a model of its own and splicing back what it makes of it::

        x (NCHW)                          x (NCHW)
          |                                 |
        Conv + Relu                     ReorderInput
          |                                 |
        Conv       x                    nchwc.Conv(activation=Relu)
          |       /                         |
         Add ----'              ->      nchwc.Conv(sum=ReorderInput(x), activation=Relu)
          |                                 |
         Relu                           ReorderOutput
          |                                 |
        y (NCHW)                          y (NCHW)

The region's boundary tensors stay NCHW, so a region can be chosen on its own; neighbouring
NCHWc regions pay a ReorderOutput / ReorderInput pair between them. ORT blocks an Add only when
all its inputs are NCHWc, so a residual input from outside the region (``x`` above) is first
made NCHWc by a 1x1 MaxPool (an identity ORT blocks), which is dropped from ORT's result.

When the choice matters: a session that runs ``NchwcTransformer`` (``ORT_ENABLE_LAYOUT`` or
``ORT_ENABLE_ALL`` without it in ``disabled_optimizers``) converts every other eligible region
itself, so "keep" means "ONNX Runtime decides". The per-region choice is real when the session
disables it (``disabled_optimizers=["NchwcTransformer"]``) or runs at ``ORT_ENABLE_EXTENDED`` or
below: the spliced NCHWc nodes are ordinary contrib kernels and run at every level, even
``ORT_DISABLE_ALL``.

The weights are reordered for this machine's block size (recorded in the model's
``autotune.nchwc_block_size`` metadata), while the kernels take the block size of the CPU they
run on: a rewritten model must run on a CPU with the same block size as the one it was built on.

What ONNX Runtime 1.32 converts, found by experiment on an AVX-512 machine (block size 16):
- Conv with constant 4-D float weights (and a constant bias, if any); any output channel count
  (padded up to the block size), any kernel, stride, dilation and padding; input channels fewer
  than the block size (read in NCHW directly) or a multiple of 4 (padded); depthwise: channels
  a multiple of 4; other grouped Convs: per-group input and output channels multiples of the
  block size.
- MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool over a multiple of the block size.
- Relu, Sigmoid, Tanh and Add, Sum, Mul of equal shapes on NCHWc tensors (the Add into the
  Conv before it, the activation into the Conv or Conv + Add before it); Clip, LeakyRelu,
  HardSigmoid only as the activation of the single-use Conv before them; BatchNormalization on
  an NCHWc tensor; Concat on the channel axis of block-aligned parts.
`ALIGN` is the 4 above; the rule test checks these rules against the installed ONNX Runtime.
"""
from __future__ import annotations

import functools
import os
import tempfile
from collections import defaultdict

import numpy as np
import onnx
import onnx_ir as ir

from autotune.rewrites import Match, Rewrite, site_nodes

DOMAIN = "com.microsoft.nchwc"
ALIGN = 4  # channel alignment ORT pads Conv inputs and depthwise channels from (see above)
MAX_CONVS = 4  # a site is a residual block or a few Convs: small enough to choose per region
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh")  # run on NCHWc tensors anywhere in a region
FUSED_ONLY = ("Clip", "LeakyRelu", "HardSigmoid")  # NCHWc only as a Conv's fused activation
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
BINARY = ("Add", "Sum", "Mul")
_STANDARD = ("", "ai.onnx")


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's constant, also through Identity nodes (the TorchScript exporter shares equal
    biases that way). Not read: its shape and type are all `find` needs."""
    while value is not None:
        if value.const_value is not None:
            return value.const_value
        node = value.producer()
        if node is None or node.op_type != "Identity" or node.domain not in _STANDARD:
            return None
        value = node.inputs[0]
    return None


def _channels(value: ir.Value | None) -> int | None:
    shape = value.shape if value is not None else None
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    return shape[1]


def _float_weights(node: ir.Node) -> tuple[int, ...] | None:
    """The shape of a Conv's weights, if they are a constant 4-D float tensor (ORT's first
    condition)."""
    if node.op_type != "Conv" or node.domain not in _STANDARD or len(node.inputs) < 2:
        return None
    w = _const(node.inputs[1])
    if w is None or len(w.shape) != 4 or w.dtype != ir.DataType.FLOAT:
        return None
    return tuple(w.shape)


@functools.cache
def block_size() -> int:
    """ORT's NCHWc block size here (8 with AVX2, 16 with AVX-512; 0: no NCHWc path): the output
    channel count it pads a one-channel Conv's weights to."""
    g = onnx.helper
    conv = g.make_node("Conv", ["x", "w"], ["y"])
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = g.make_graph([conv], "probe", [g.make_tensor_value_info("x", 1, [1, 1, 1, 1])],
                         [g.make_tensor_value_info("y", 1, [1, 1, 1, 1])], [w])
    probe = _optimize(g.make_model(graph, opset_imports=[g.make_opsetid("", 17)], ir_version=8))
    blocked = {n.input[1] for n in probe.graph.node if n.domain == DOMAIN and n.op_type == "Conv"}
    return next((int(t.dims[0]) for t in probe.graph.initializer if t.name in blocked), 0)


def _optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` as ORT's CPU provider rewrites it up to its layout level (NchwcTransformer)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    levels = ort.GraphOptimizationLevel
    so.graph_optimization_level = getattr(levels, "ORT_ENABLE_LAYOUT", levels.ORT_ENABLE_ALL)
    so.log_severity_level = 3  # it warns that the saved model is hardware specific: known
    so.intra_op_num_threads = 1  # nothing is run; no thread pool needed
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _conv_problem(node: ir.Node, w: tuple[int, ...], block: int) -> str | None:
    """Why ORT leaves this Conv (with constant 4-D float weights of shape `w`) in NCHW; None: it
    does not."""
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = _const(node.inputs[2])
        if b is None or b.dtype != ir.DataType.FLOAT or len(b.shape) != 1:
            return "its bias is not a constant 1-D float tensor"
    group = node.attributes.get_int("group", 1)
    cout, cin = w[:2]  # cin: input channels per group
    if group == 1:
        if cin >= block and cin % ALIGN:
            return (f"{cin} input channels: ORT's NCHWc Conv takes fewer than {block} or a "
                    f"multiple of {ALIGN}")
    elif cin == 1 and cout == group:
        if cout % ALIGN:
            return f"depthwise over {cout} channels: ORT's NCHWc Conv needs a multiple of {ALIGN}"
    elif cin % block or cout % group or (cout // group) % block:
        return (f"{group} groups of {cin} input and {cout // group} output channels: ORT's "
                f"NCHWc Conv needs multiples of {block} per group")
    return None


def _pool_problem(node: ir.Node, block: int) -> str | None:
    if len(node.outputs) > 1:
        return "it has the Indices output"
    c = _channels(node.inputs[0])
    if c is None or c % block:
        return f"{c} channels: ORT's NCHWc pooling needs a multiple of {block}"
    return None


def _candidates(model: ir.Model, block: int) -> set[ir.Node]:
    """The nodes ORT would run in NCHWc if it converted the whole graph: Convs and poolings it
    accepts, then the nodes after them that can take NCHWc tensors."""
    graph = model.graph
    chosen: set[ir.Node] = set()
    outputs = set(graph.outputs)

    def from_chosen(v: ir.Value | None) -> bool:
        return v is not None and v.producer() in chosen

    def blockable(v: ir.Value | None) -> bool:
        """NCHWc already, or a tensor a region can make NCHWc (see `_submodel`)."""
        c = _channels(v)
        return from_chosen(v) or (c is not None and c % block == 0 and _const(v) is None)

    for node in graph:
        if node.domain not in _STANDARD or not node.inputs or node.inputs[0] is None:
            continue
        op, x = node.op_type, node.inputs[0]
        if op == "Conv":
            w = _float_weights(node)
            ok = w is not None and _conv_problem(node, w, block) is None
        elif op in POOLS:
            ok = _pool_problem(node, block) is None
        elif op in ACTIVATIONS:
            ok = from_chosen(x)
        elif op in FUSED_ONLY:
            # ORT fuses these into a Conv (ConvActivationFusion) before blocking it, only when
            # the Conv's output feeds nothing else and the bounds are constant.
            producer = x.producer()
            ok = (from_chosen(x) and producer.op_type == "Conv" and len(list(x.uses())) == 1
                  and x not in outputs
                  and all(_const(v) is not None for v in node.inputs[1:] if v is not None))
        elif op in BINARY:
            shapes = {tuple(v.shape) if v.shape is not None else None for v in node.inputs}
            ok = (any(map(from_chosen, node.inputs)) and all(map(blockable, node.inputs))
                  and len(shapes) == 1 and None not in shapes)
        elif op == "BatchNormalization":
            ok = (from_chosen(x) and len(node.outputs) == 1
                  and all(_const(v) is not None for v in node.inputs[1:]))
        elif op == "Concat":
            channels = [_channels(v) for v in node.inputs]
            ok = (node.attributes.get_int("axis", 0) == 1 and any(map(from_chosen, node.inputs))
                  and all(map(blockable, node.inputs))
                  and all(c is not None and c % block == 0 for c in channels))
        else:
            ok = False
        if ok:
            chosen.add(node)
    return chosen


def _module(name: str) -> tuple[str, ...]:
    """The exporter's module path of a node (/layer1/layer1.0/conv1/Conv -> layer1, layer1.0,
    conv1); () for flat names."""
    return tuple(name.strip("/").split("/")[:-1]) if "/" in name else ()


def _regions(model: ir.Model) -> list[list[ir.Node]]:
    """Connected groups of candidate nodes, split into sites of at most MAX_CONVS Convs: by
    exporter module path at the shallowest depth that allows it (a residual block), else by
    count. Nodes fed by a region join the region of their last input's producer."""
    block = block_size()
    if not block:
        return []
    chosen = _candidates(model, block)
    order = {node: i for i, node in enumerate(model.graph)}
    parent = {node: node for node in chosen}

    def root(node: ir.Node) -> ir.Node:
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in chosen:
        for v in node.inputs:
            if v is not None and v.producer() in chosen:
                parent[root(node)] = root(v.producer())
    components: dict[ir.Node, list[ir.Node]] = defaultdict(list)
    for node in sorted(chosen, key=order.__getitem__):
        components[root(node)].append(node)

    regions: list[list[ir.Node]] = []
    for nodes in components.values():
        producers = {n: [v.producer() for v in n.inputs if v is not None and v.producer() in chosen]
                     for n in nodes}
        # Seeds start regions: every Conv, and a pooling that reads from outside.
        seeds = [n for n in nodes if n.op_type == "Conv" or not producers[n]]
        convs = [n for n in seeds if n.op_type == "Conv"]
        depth = max((len(_module(n.name)) for n in convs), default=0)
        for d in range(depth + 1):
            counts: dict[tuple[str, ...], int] = defaultdict(int)
            for n in convs:
                counts[_module(n.name)[:d]] += 1
            if max(counts.values(), default=0) <= MAX_CONVS:
                depth = d
                break
        keyed: dict[tuple[str, ...], list[list[ir.Node]]] = {}
        region_of: dict[ir.Node, list[ir.Node]] = {}
        for n in nodes:
            if n in seeds:
                chunks = keyed.setdefault(_module(n.name)[:depth], [[]])
                full = sum(m.op_type == "Conv" for m in chunks[-1]) == MAX_CONVS
                if n.op_type == "Conv" and full:
                    chunks.append([])
                region = chunks[-1]
                if not region:
                    regions.append(region)
            else:
                region = region_of[max(producers[n], key=order.__getitem__)]
            region.append(n)
            region_of[n] = region
    regions.sort(key=lambda r: order[r[0]])
    return regions


def find(model: ir.Model) -> list[Match]:
    return [Match(r[0].name, tuple(n.name for n in r)) for r in _regions(model)]


def rejected(model: ir.Model) -> list[tuple[str, str]]:
    """Convs with constant 4-D float weights ORT would leave in NCHW, and poolings fed by a
    region that ORT would not block, with why."""
    block = block_size()
    if not block:
        return []
    chosen = _candidates(model, block)
    out = []
    for node in model.graph:
        w = _float_weights(node)
        if w is not None:
            reason = _conv_problem(node, w, block)
        elif (node.op_type in POOLS and node.domain in _STANDARD
              and node.inputs[0] is not None and node.inputs[0].producer() in chosen):
            reason = _pool_problem(node, block)
        else:
            continue
        if reason:
            out.append((node.name, reason))
    return out


def _boundary(graph: ir.Graph, nodes: list[ir.Node]):
    """(tensor inputs, constant inputs, outputs) of a region, each in first-use order."""
    inside = set(nodes)
    produced = {v for n in nodes for v in n.outputs}
    tensors: dict[ir.Value, None] = {}
    constants: dict[ir.Value, ir.TensorProtocol] = {}
    for n in nodes:
        for v in n.inputs:
            if v is None or v in produced or v in tensors or v in constants:
                continue
            tensor = _const(v)
            if tensor is not None:
                constants[v] = tensor
            else:
                tensors[v] = None
    graph_outputs = set(graph.outputs)
    outputs = [v for n in nodes for v in n.outputs
               if v in graph_outputs or any(u.node not in inside for u in v.uses())]
    return list(tensors), constants, outputs


def _value_info(value: ir.Value) -> onnx.ValueInfoProto:
    if value.type is None:
        raise ValueError(f"nchwc: tensor {value.name} has no inferred type")
    return ir.serde.serialize_value(value)


def _submodel(model: ir.Model, nodes: list[ir.Node], tensors: list[ir.Value],
              constants: dict[ir.Value, ir.TensorProtocol], outputs: list[ir.Value],
              block: int) -> tuple[onnx.ModelProto, set[str]]:
    """The region as a model of its own; also the names of the seed nodes added to it.

    A region input that reaches an Add / Sum / Mul / Concat directly would make ORT leave that
    node in NCHW (it blocks such nodes only when all their inputs are NCHWc). A 1x1 MaxPool on
    the input (an exact identity) is blocked like any pooling and makes the input NCHWc; it is
    taken out again after ORT has blocked the region."""
    protos = [ir.serde.serialize_node(n) for n in nodes]
    inside = set(nodes)
    seeds: list[onnx.NodeProto] = []
    for v in tensors:
        c = _channels(v)
        joins = any(u.node in inside and u.node.op_type in (*BINARY, "Concat") for u in v.uses())
        if not joins or c is None or c % block:
            continue
        seed = f"{v.name}/nchwc_seed"
        seeds.append(onnx.helper.make_node("MaxPool", [v.name], [seed], name=seed,
                                           kernel_shape=[1, 1]))
        for p in protos:
            p.input[:] = [seed if i == v.name else i for i in p.input]
    weights = []
    for v, tensor in constants.items():  # under the name the region reads them by
        proto = onnx.TensorProto()
        proto.CopyFrom(ir.serde.serialize_tensor(tensor))  # a copy: it may be the model's own
        proto.name = v.name
        weights.append(proto)
    inner = [v for n in nodes for v in n.outputs if v.type is not None and v not in outputs]
    graph = onnx.helper.make_graph(
        seeds + protos, "nchwc_region", [_value_info(v) for v in tensors],
        [_value_info(v) for v in outputs], weights,
        value_info=[_value_info(v) for v in inner])
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    # Below IR version 4 initializers are inputs a caller may override: ORT would not block
    # Convs over them.
    sub = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=max(model.ir_version, 4))
    return sub, {s.output[0] for s in seeds}


def _drop_seeds(optimized: onnx.ModelProto, seeds: set[str]) -> None:
    """Takes the seed MaxPools (identities, blocked or not) out of ORT's result."""
    graph = optimized.graph
    # ORT names a blocked node after its output: <output>_nchwc.
    names = seeds | {f"{s}_nchwc" for s in seeds}
    drop = [n for n in graph.node if n.op_type == "MaxPool" and n.name in names]
    for n in drop:
        graph.node.remove(n)
        for other in graph.node:
            other.input[:] = [n.input[0] if i == n.output[0] else i for i in other.input]


def apply(model: ir.Model, site: Match, option: str = "nchwc") -> list[ir.Node]:
    if option == "keep":
        return []
    if option != "nchwc":
        raise ValueError(f"nchwc site {site.anchor}: no option {option!r}")
    graph = model.graph
    nodes = site_nodes(model, site, "nchwc")
    block = block_size()
    if not block:
        raise ValueError(f"nchwc site {site.anchor}: this ONNX Runtime has no NCHWc kernels")
    tensors, constants, outputs = _boundary(graph, nodes)
    if not outputs:
        raise ValueError(f"nchwc site {site.anchor}: nothing outside uses the region")
    sub, seeds = _submodel(model, nodes, tensors, constants, outputs, block)
    optimized = _optimize(sub)
    _drop_seeds(optimized, seeds)
    if not any(n.domain == DOMAIN for n in optimized.graph.node):
        raise ValueError(f"nchwc site {site.anchor}: ONNX Runtime put none of its nodes in "
                         f"NCHWc (an earlier rewrite may have changed them)")
    new_nodes = _splice(model, nodes, optimized, tensors, outputs, f"{site.anchor}/nchwc/")
    model.metadata_props["autotune.nchwc_block_size"] = str(block)
    return new_nodes


def _splice(model: ir.Model, nodes: list[ir.Node], optimized: onnx.ModelProto,
            tensors: list[ir.Value], outputs: list[ir.Value], prefix: str) -> list[ir.Node]:
    """Replaces `nodes` with ORT's nodes for them: its weights and inner tensors renamed under
    `prefix`, the boundary tensors kept."""
    graph = model.graph
    values: dict[str, ir.Value] = {v.name: v for v in tensors}
    for t in optimized.graph.initializer:
        name = t.name
        tensor = ir.serde.deserialize_tensor(t)  # wraps `t`: renaming it renames `t` too
        tensor.name = prefix + name
        value = ir.Value(name=tensor.name, shape=tensor.shape, type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        graph.register_initializer(value)
        values[name] = value
    boundary = {v.name: v for v in outputs}
    new_nodes: list[ir.Node] = []
    pending = list(optimized.graph.node)
    while pending:  # in dependency order, whatever order ORT saved them in
        ready = [p for p in pending if all(not i or i in values for i in p.input)]
        if not ready:
            raise ValueError(f"nchwc: ORT's result for {prefix} has a cycle or a dangling input")
        pending = [p for p in pending if all(p is not r for r in ready)]
        for p in ready:
            node = ir.Node(p.domain, p.op_type, [values[i] if i else None for i in p.input],
                           [ir.serde.deserialize_attribute(a) for a in p.attribute],
                           num_outputs=len(p.output), name=prefix + p.name)
            for out, name in zip(node.outputs, p.output):
                out.name = name if name in boundary else prefix + name
                values[name] = out
            new_nodes.append(node)
    for domain in {n.domain for n in new_nodes} - {""}:
        version = next((o.version for o in optimized.opset_import if o.domain == domain), 1)
        model.opset_imports.setdefault(domain, version)
    for old in outputs:
        name, new = old.name, values[old.name]
        old.name = f"{name}/replaced"
        new.name, new.shape, new.type = name, old.shape, old.type
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = new
        ir.convenience.replace_all_uses_with(old, new)
    graph.extend(new_nodes)
    graph.remove(nodes, safe=True)
    graph.sort()
    return new_nodes


REWRITES = [
    Rewrite("nchwc", "layout", False, find, apply,
            "a region of Convs (with their activations, Adds and poolings) in ORT's blocked "
            "NCHWc layout; matters when the session disables NchwcTransformer", rejected,
            options=("keep", "nchwc")),
]
