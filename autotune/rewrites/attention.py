"""Attention fusion (lossless): an unfused multi-head self-attention block -> ORT's MultiHeadAttention."""
from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchStatus

from autotune.rewrites import Match, Rewrite, rename

_ONNX = ("", "ai.onnx")
_INT_TYPES = {ir.DataType.INT64, ir.DataType.INT32}


def _dim(value: ir.Value, i: int):
    """Dimension i of a value: an int, a symbol name, or a token that equals only itself."""
    d = value.shape[i] if value.shape is not None else None
    if isinstance(d, int):
        return d
    if d is not None and d.value is not None:
        return d.value
    return ("dim", id(value), i)


def _elements(value: ir.Value | None, depth: int = 0) -> list | None:
    """The elements of a 1-D integer shape tensor as `_dim` would name them, following the
    Shape/Gather/Unsqueeze/Concat chains exporters emit for dynamic axes; None when the chain
    holds something this does not follow."""
    if value is None or depth > 32:
        return None
    if value.const_value is not None:
        array = value.const_value.numpy()
        return [int(x) for x in array.reshape(-1)] if array.ndim <= 1 and array.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or node.domain not in _ONNX:
        return None
    op, inputs = node.op_type, node.inputs
    if op == "Shape":
        src = inputs[0]
        if src.shape is None:
            return None
        rank = len(src.shape)
        start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", rank)
        start, end = (max(0, min(rank, s + rank if s < 0 else s)) for s in (start, end))
        return [_dim(src, i) for i in range(start, end)]
    if op in ("Identity", "Unsqueeze", "Squeeze"):  # on scalars and 1-D tensors the elements stay
        return _elements(inputs[0], depth + 1)
    if op == "Cast":
        return _elements(inputs[0], depth + 1) if node.attributes.get_int("to", 0) in _INT_TYPES else None
    if op == "Concat":
        parts = [_elements(v, depth + 1) for v in inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Gather":
        data, index = _elements(inputs[0], depth + 1), _elements(inputs[1], depth + 1)
        if data is None or index is None or node.attributes.get_int("axis", 0) != 0:
            return None
        if not all(isinstance(i, int) and -len(data) <= i < len(data) for i in index):
            return None
        return [data[i] for i in index]
    if op in ("Div", "Mul"):
        a, b = _elements(inputs[0], depth + 1), _elements(inputs[1], depth + 1)
        if a is None or b is None or 1 not in (len(a), len(b)) and len(a) != len(b):
            return None
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a) if len(b) == 1 else b)
        out = []
        for k, (x, y) in enumerate(zip(a, b)):
            if isinstance(x, int) and isinstance(y, int) and (op == "Mul" or y != 0):
                out.append(x * y if op == "Mul" else int(x / y))  # ONNX integer Div truncates
            else:
                out.append(("expr", id(node), k))
        return out
    return None


def _same_as(element, reference, allowzero: bool) -> bool:
    """Whether a reshape shape element keeps the input dimension `reference`."""
    return (element == 0 and not allowzero) or (element == reference and element != -1)


def _heads(reshape_input: ir.Value, shape: ir.Value, allowzero: bool, what: str) -> int | str:
    """The head count of a [b, t, d] -> [b, t, h, d / h] Reshape, or why it is not one."""
    if reshape_input.shape is None or len(reshape_input.shape) != 3:
        return f"{what} is not known to be rank-3 [batch, seq, hidden]"
    dims = _elements(shape)
    if dims is None or len(dims) != 4:
        return (f"the number of heads cannot be determined: the {what} Reshape shape is neither "
                f"a constant nor a Shape/Gather/Concat chain of 4 elements")
    hidden = _dim(reshape_input, 2)
    if isinstance(dims[2], int) and dims[2] > 0:
        heads = dims[2]
    elif isinstance(dims[3], int) and dims[3] > 0 and isinstance(hidden, int) and hidden % dims[3] == 0:
        heads = hidden // dims[3]
    else:
        return f"the number of heads cannot be determined from the {what} Reshape shape"
    if isinstance(hidden, int) and hidden % heads:
        return f"{what} hidden size {hidden} is not a multiple of {heads} heads"
    # Reshape keeps the element count, so three proven dimensions pin down the fourth.
    proven = [_same_as(dims[0], _dim(reshape_input, 0), allowzero),
              _same_as(dims[1], _dim(reshape_input, 1), allowzero),
              dims[2] == heads,
              isinstance(hidden, int) and dims[3] == hidden // heads]
    if proven.count(False) > 1:
        return f"the {what} Reshape is not known to split [batch, seq, hidden] into heads"
    return heads


def _scalar(value: ir.Value | None) -> float | None:
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return float(array.reshape(-1)[0]) if array.size == 1 and array.dtype.kind == "f" else None


def _analyse(q, k, v, c, out, mask=None, scaling="none", **bindings) -> tuple[int, float] | str:
    """(num_heads, scale) for a matched block, or the reason it cannot be fused."""
    if mask is not None:
        return "a mask is added to the scores (not mapped to MultiHeadAttention's attention_bias)"
    if scaling == "none":
        scale = 1.0
    else:
        constant = _scalar(c)
        if constant is None or constant == 0 or not math.isfinite(constant):
            return "the scores are scaled by something other than a nonzero constant scalar"
        scale = 1.0 / constant if scaling == "div" else constant
    types = {x.dtype for x in (q, k, v)}
    if len(types) != 1 or types.pop() not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return "query, key and value must all be float or all float16"
    heads = []
    for name, x in (("query", q), ("key", k), ("value", v)):
        reshape = bindings[f"{name}_heads"].producer()
        h = _heads(x, reshape.inputs[1], bool(reshape.attributes.get_int("allowzero", 0)), name)
        if isinstance(h, str):
            return h
        heads.append(h)
    if len(set(heads)) != 1:
        return f"query, key and value are split into different head counts {heads}"
    # MatMul would broadcast a batch of 1; MultiHeadAttention would not.
    if not _dim(q, 0) == _dim(k, 0) == _dim(v, 0):
        return "query, key and value are not known to share one batch size"
    if _dim(k, 1) != _dim(v, 1):
        return "key and value are not known to share one sequence length"
    reshape = out.producer()
    dims = _elements(reshape.inputs[1])
    allowzero = bool(reshape.attributes.get_int("allowzero", 0))
    v_hidden = _dim(v, 2)
    if dims is None or len(dims) != 3 or [
            _same_as(dims[0], _dim(q, 0), allowzero), _same_as(dims[1], _dim(q, 1), allowzero),
            isinstance(v_hidden, int) and dims[2] == v_hidden].count(False) > 1:
        return "the output Reshape is not known to merge the heads back into [batch, seq, hidden]"
    return heads[0], scale


class AttentionFusion(pattern.RewriteRuleClassBase):
    """Replaces an unfused multi-head attention block with ORT's ``MultiHeadAttention(q, k, v)``.

        q                k                   v
        |                |                   |
     Reshape          Reshape             Reshape          [b, t, d] -> [b, t, h, d/h]
        |                |                   |
     Transpose        Transpose(0,2,3,1)  Transpose         (or two Transposes for k)
         \\              /                   |
           MatMul                             |
             |                                |
        Div / Mul by c (or none)              |
             |                                |
          Softmax(last axis)                  |
               \\                            /
                  MatMul  ------------------
                    |
                Transpose(0,2,1,3)
                    |
                 Reshape                         [b, h, t, d/h] -> [b, t, d]
                    |
                   out      ->   out = MultiHeadAttention(q, k, v, num_heads=h, scale=1/c)
    """

    def pattern(self, op, q, k, v, q_shape, k_shape, v_shape, c, mask, out_shape):
        qh = op.Transpose(op.Reshape(q, q_shape, _allow_other_attributes=True,
                                     _outputs=["query_heads"]), perm=[0, 2, 1, 3])
        kh = op.Reshape(k, k_shape, _allow_other_attributes=True, _outputs=["key_heads"])
        kt = pattern.OrValue([op.Transpose(kh, perm=[0, 2, 3, 1]),
                              op.Transpose(op.Transpose(kh, perm=[0, 2, 1, 3]), perm=[0, 1, 3, 2])])
        vh = op.Transpose(op.Reshape(v, v_shape, _allow_other_attributes=True,
                                     _outputs=["value_heads"]), perm=[0, 2, 1, 3])
        scores = op.MatMul(qh, kt)
        scaled = pattern.OrValue([op.Div(scores, c), op.Mul(scores, c), op.Mul(c, scores), scores],
                                 tag_var="scaling", tag_values=["div", "mul", "mul", "none"])
        # Masked blocks are matched only to say why they are turned down.
        logits = pattern.OrValue([op.Add(scaled, mask), op.Add(mask, scaled), scaled])
        attn = op.Softmax(logits, _allow_other_attributes=True, _outputs=["attn"])
        ctx = op.Transpose(op.MatMul(attn, vh), perm=[0, 2, 1, 3])
        return op.Reshape(ctx, out_shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, attn, **bindings):
        result = pattern.MatchResult()
        # Before opset 13 Softmax's axis defaulted to 1 (and flattened the axes after it).
        default = -1 if context.model.opset_imports.get("", 13) >= 13 else 1
        if attn.producer().attributes.get_int("axis", default) not in (-1, 3):  # scores are rank 4
            return result.fail("softmax is not over the last (key) axis")
        found = _analyse(**bindings)
        return result.fail(found) if isinstance(found, str) else result

    def rewrite(self, op, q, k, v, **bindings):
        heads, scale = _analyse(q=q, k=k, v=v, **bindings)
        return op.MultiHeadAttention(q, k, v, num_heads=heads, scale=scale, _domain="com.microsoft")


_RULE = AttentionFusion.rule()


def _softmax(nodes) -> ir.Node | None:
    return next((n for n in nodes if n.op_type == "Softmax"), None)


def find(model: ir.Model) -> list[Match]:
    found = []
    for node in model.graph:
        match = _RULE.match(model, model.graph, node)
        if match:
            softmax = _softmax(match.nodes)
            found.append(Match(softmax.name, tuple(n.name for n in match.nodes)))
    return found


def rejected(model: ir.Model) -> list[tuple[str, str]]:
    out = []
    for node in model.graph:
        tracer = MatchingTracer()
        if _RULE.match(model, model.graph, node, tracer=tracer):
            continue
        for infos in tracer.best_matches_map.values():
            for info in infos:
                if info.root_node is node and info.status == MatchStatus.CONDITION_FAILED:
                    softmax = _softmax(info.match_result.nodes)
                    out.append((softmax.name if softmax else node.name, info.match_result.reason))
                    break
            else:
                continue
            break
    return out


def _output_reshape(softmax: ir.Node) -> ir.Node | None:
    """The Reshape that ends the block: Softmax -> MatMul -> Transpose -> Reshape."""
    node = softmax
    for op in ("MatMul", "Transpose", "Reshape"):
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0].node.op_type != op:
            return None
        node = uses[0].node
    return node


def apply(model: ir.Model, site: Match, option: str = "apply") -> list[ir.Node]:
    if option == "keep":
        return []
    softmax = next((n for n in model.graph if n.name == site.anchor), None)
    if softmax is None:
        raise ValueError(f"attention site {site.anchor}: its Softmax is gone (an earlier rewrite "
                         f"replaced it)")
    root = _output_reshape(softmax)
    delta = _RULE.try_rewrite(model, model.graph, root) if root is not None else None
    if delta is None or softmax not in delta.match.nodes:
        raise ValueError(f"attention site {site.anchor} no longer matches (an earlier rewrite "
                         f"changed its nodes)")
    ir.convenience.replace_nodes_and_values(model.graph, root, delta.match.nodes, delta.new_nodes,
                                            delta.match.outputs, delta.new_outputs)
    rename(delta.new_nodes, site.anchor, "attention")
    model.opset_imports.setdefault("com.microsoft", 1)
    return list(delta.new_nodes)


REWRITES = [
    Rewrite("attention", "fusion", False, find, apply,
            "Reshape/Transpose/MatMul/Softmax self-attention -> com.microsoft MultiHeadAttention",
            rejected),
]
