"""Fusion and layout rewrites (lossless): onnxscript's rules where they fit, one site per match."""
from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchStatus
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion, GeluTanhFusion
from onnxscript.rewriter.rules.common import (fuse_batchnorm_into_conv_rule,
                                              matmul_add_to_gemm_rule, transpose_transpose_rule)
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormFusion

from autotune.rewrites import Match, Rewrite, rename


class SkipLayerNormFusion(pattern.RewriteRuleClassBase):
    """Replaces ``LayerNormalization(Add(a, b))`` with ORT's ``SkipLayerNormalization(a, b)``.

        a   b                      a   b
         \\ /                        \\ /
         Add        gamma beta  ->  SkipLayerNormalization(gamma, beta)
          |          /   /               |
        LayerNormalization                y
          |
          y
    """

    def pattern(self, op, a, b, gamma, beta):
        return op.LayerNormalization(op.Add(a, b), gamma, beta, _allow_other_attributes=True,
                                     _outputs=["y"])

    def check(self, context, a, b, gamma, beta, y, **_):
        result = pattern.MatchResult()
        ln = y.producer()
        axis = ln.attributes.get_int("axis", -1)
        if axis != -1 and not (a.shape is not None and axis == len(a.shape) - 1):
            return result.fail("normalizes over an axis other than the last")
        if a.shape is None or b.shape is None or len(a.shape) != 3 or len(b.shape) != 3:
            return result.fail("SkipLayerNormalization needs two rank-3 inputs of the same shape")
        if gamma.shape is None or len(gamma.shape) != 1 or (beta is not None and beta.shape is not None and len(beta.shape) != 1):
            return result.fail("gamma and beta must be 1-D")
        return result

    def rewrite(self, op, a, b, gamma, beta, y, **_):
        epsilon = y.producer().attributes.get_float("epsilon", 1e-5)
        return op.SkipLayerNormalization(a, b, gamma, beta, epsilon=epsilon,
                                         _domain="com.microsoft")


# Activations ORT's CPU FusedConv / FusedGemm kernels apply in place (MLAS activations).
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip")


def _activation_attributes(act: ir.Node) -> tuple[dict, str | None]:
    """FusedConv's `activation` / `activation_params` for an activation node, or a reason."""
    if act.op_type in ("Relu", "Sigmoid", "Tanh"):
        return {"activation": act.op_type}, None
    if act.op_type == "LeakyRelu":
        return {"activation": "LeakyRelu",
                "activation_params": [act.attributes.get_float("alpha", 0.01)]}, None
    if act.op_type == "HardSigmoid":
        return {"activation": "HardSigmoid",
                "activation_params": [act.attributes.get_float("alpha", 0.2),
                                      act.attributes.get_float("beta", 0.5)]}, None
    bounds = []  # Clip: min and max must be constants for the fused kernel
    for i, default in ((1, float("-inf")), (2, float("inf"))):
        value = act.inputs[i] if len(act.inputs) > i else None
        if value is None:
            bounds.append(default)
        elif value.const_value is None or value.const_value.numpy().size != 1:
            return {}, "Clip bounds are not constant scalars"
        else:
            bounds.append(float(value.const_value.numpy().reshape(())))
    return {"activation": "Clip", "activation_params": bounds}, None


class ConvActivationFusion(pattern.RewriteRuleClassBase):
    """Replaces ``Act(Conv(x, w, b))`` with ORT's ``FusedConv(x, w, b, activation=Act)``.

        x  w  (b)                 x  w  (b)
         \\ | /                     \\ | /
          Conv          ->        FusedConv(activation)
           |                          |
          Act                         y
           |
           y
    """

    def __init__(self, activation: str) -> None:
        super().__init__(f"Conv{activation}Fusion")
        self.activation = activation

    def pattern(self, op, x):
        conv = op.Conv(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["c"])
        return getattr(op, self.activation)(conv, _allow_other_inputs=True,
                                            _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, c, y, **_):
        result = pattern.MatchResult()
        if c.producer().domain not in ("", "ai.onnx"):
            return result.fail("not an ONNX Conv")
        _, why = _activation_attributes(y.producer())
        return result.fail(why) if why else result

    def rewrite(self, op, x, c, y, **_):
        conv = c.producer()
        attrs, _ = _activation_attributes(y.producer())
        return op.FusedConv(*conv.inputs, **{k: a.value for k, a in conv.attributes.items()},
                            **attrs, _domain="com.microsoft")


class ConvAddFusion(pattern.RewriteRuleClassBase):
    """Replaces ``[Relu](Add(Conv(x, w, b), z))`` (a residual sum) with ORT's
    ``FusedConv(x, w, b, z [, activation=Relu])``, which adds z inside the convolution.

        x  w  (b)                  x  w  (b)  z
         \\ | /                      \\ | /   /
          Conv   z        ->        FusedConv
             \\ /                        |
             Add                        y
              |
            [Relu]
              |
              y
    """

    def __init__(self, relu: bool) -> None:
        super().__init__("ConvAddReluFusion" if relu else "ConvAddFusion")
        self.relu = relu

    def pattern(self, op, x, z):
        conv = op.Conv(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["c"])
        y = op.Add(conv, z)
        return op.Relu(y) if self.relu else y

    def check(self, context, x, z, c, **_):
        result = pattern.MatchResult()
        if c.producer().domain not in ("", "ai.onnx"):
            return result.fail("not an ONNX Conv")
        if c.shape is None or z.shape is None or len(c.shape) != len(z.shape):
            return result.fail("the shapes of the convolution and the summand are not known")
        if list(c.shape.dims) != list(z.shape.dims):
            return result.fail("the summand broadcasts; FusedConv needs one of the output's shape")
        return result

    def rewrite(self, op, x, z, c, **_):
        conv = c.producer()
        inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs))
        attrs = {k: a.value for k, a in conv.attributes.items()}
        if self.relu:
            attrs["activation"] = "Relu"
        return op.FusedConv(*inputs, z, **attrs, _domain="com.microsoft")


class GemmActivationFusion(pattern.RewriteRuleClassBase):
    """Replaces ``Act(Gemm(a, b, c))`` with ORT's ``FusedGemm(a, b, c, activation=Act)``."""

    def __init__(self, activation: str) -> None:
        super().__init__(f"Gemm{activation}Fusion")
        self.activation = activation

    def pattern(self, op, a):
        gemm = op.Gemm(a, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["g"])
        return getattr(op, self.activation)(gemm, _allow_other_attributes=True, _outputs=["y"])

    def rewrite(self, op, a, g, y, **_):
        gemm, act = g.producer(), y.producer()
        attrs = {k: v.value for k, v in gemm.attributes.items()}
        attrs["activation"] = act.op_type
        if act.op_type == "LeakyRelu":
            attrs["activation_alpha"] = act.attributes.get_float("alpha", 0.01)
        return op.FusedGemm(*gemm.inputs, **attrs, _domain="com.microsoft")


class SiluFusion(pattern.RewriteRuleClassBase):
    """Replaces ``Mul(x, Sigmoid(x))`` (SiLU, YOLO's activation) with ORT's
    ``QuickGelu(x, alpha=1)``, which computes x * sigmoid(alpha * x) in one pass."""

    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def rewrite(self, op, x, **_):
        return op.QuickGelu(x, alpha=1.0, _domain="com.microsoft")


class TransposeIntoMatMul(pattern.RewriteRuleClassBase):
    """Replaces ``MatMul(a, Transpose(x, perm))`` with ORT's ``FusedMatMul(a, Transpose(x, perm'),
    transB=1)``, where perm' is perm with its last two axes swapped back: the MatMul reads its
    operand transposed instead of a copy being made with the innermost axis moved. perm' keeps
    the innermost axis in place (a cheaper copy), or is the identity and the Transpose goes.

        x                         x
        |                         |
    Transpose(0,2,3,1)  ->   Transpose(0,2,1,3)      (e.g. attention keys)
        |                         |
      MatMul(a, .)           FusedMatMul(a, ., transB=1)
    """

    def __init__(self, operand: int) -> None:
        super().__init__(f"TransposeIntoMatMul{'AB'[operand]}")
        self.operand = operand

    def pattern(self, op, a, x):
        t = op.Transpose(x, _allow_other_attributes=True, _outputs=["t"])
        return op.MatMul(t, a) if self.operand == 0 else op.MatMul(a, t)

    def _perm(self, t: ir.Value) -> list[int] | None:
        perm = t.producer().attributes.get_ints("perm", None)
        return list(perm) if perm is not None else None

    def check(self, context, a, x, t, **_):
        result = pattern.MatchResult()
        perm = self._perm(t)
        if perm is None or len(perm) < 2:
            return result.fail("the Transpose has no explicit permutation of rank 2 or more")
        if a.shape is None or len(a.shape) != len(perm):
            return result.fail("the other operand's rank is not known to match (no broadcasting)")
        rest = perm[:-2] + [perm[-1], perm[-2]]
        if rest[-1] != len(perm) - 1:
            return result.fail("the Transpose does not move the innermost axis next to last: "
                               "the MatMul cannot take it over")
        return result

    def rewrite(self, op, a, x, t, **_):
        perm = self._perm(t)
        rest = perm[:-2] + [perm[-1], perm[-2]]
        inner = x if rest == list(range(len(perm))) else op.Transpose(x, perm=rest)
        if self.operand == 0:
            return op.FusedMatMul(inner, a, transA=1, _domain="com.microsoft")
        return op.FusedMatMul(a, inner, transB=1, _domain="com.microsoft")


def _commuted(rules) -> list:
    """Each rule with its commutative variants (Add(b, a) as well as Add(a, b))."""
    out = []
    for rule in rules:
        try:
            out += rule.commute()
        except ValueError:  # some patterns cannot be commuted; keep them as they are
            out.append(rule)
    return out


def _onnxscript_rewrite(name: str, rules: list, doc: str, kind: str = "fusion") -> Rewrite:
    rules = _commuted(rules)

    def find(model: ir.Model) -> list[Match]:
        found = []
        for node in model.graph:
            for rule in rules:
                match = rule.match(model, model.graph, node)
                if match:
                    found.append(Match(node.name, tuple(n.name for n in match.nodes)))
                    break
        # Where matches overlap (Conv+Add inside Conv+Add+Relu), the larger one is the site:
        # applying both could not work, and the larger one fuses more.
        kept: list[Match] = []
        taken: set[str] = set()
        for match in sorted(found, key=lambda m: -len(m.nodes)):
            if not taken & set(match.nodes):
                kept.append(match)
                taken |= set(match.nodes)
        return [m for m in found if m in kept]

    def rejected(model: ir.Model) -> list[tuple[str, str]]:
        out = []
        for node in model.graph:
            reasons = []
            for rule in rules:
                tracer = MatchingTracer()
                if rule.match(model, model.graph, node, tracer=tracer):
                    reasons = []
                    break
                reasons += [info.match_result.reason for infos in tracer.best_matches_map.values()
                            for info in infos if info.root_node is node
                            and info.status == MatchStatus.CONDITION_FAILED]
            if reasons:
                out.append((node.name, reasons[0]))
        return out

    def apply(model: ir.Model, site: Match, option: str = "apply") -> list[ir.Node]:
        node = next((n for n in model.graph if n.name == site.anchor), None)
        if node is None:
            raise ValueError(f"{name} site {site.anchor}: its anchor node is gone (an earlier "
                             f"rewrite replaced it)")
        for rule in rules:
            delta = rule.try_rewrite(model, model.graph, node)
            if delta is None:
                continue
            # Splice the replacement in as onnxscript's RewriteRuleSet does for a match.
            for init in delta.new_initializers:  # fresh names: the old weights may be shared
                init.name = f"{site.anchor}/{name}.{init.name}"
                model.graph.register_initializer(init)
            ir.convenience.replace_nodes_and_values(
                model.graph, node, delta.match.nodes, delta.new_nodes,
                delta.match.outputs, delta.new_outputs)
            rename(delta.new_nodes, site.anchor, name)
            for domain, version in ((n.domain, 1) for n in delta.new_nodes if n.domain):
                model.opset_imports.setdefault(domain, version)
            return list(delta.new_nodes)
        raise ValueError(f"{name} site {site.anchor} no longer matches (an earlier rewrite "
                         f"changed its nodes)")

    return Rewrite(name, kind, False, find, apply, doc, rejected)


def _rules(r) -> list:
    return list(r.rules) if hasattr(r, "rules") else [r]


REWRITES = [
    _onnxscript_rewrite("conv_bn", _rules(fuse_batchnorm_into_conv_rule),
                        "Conv + BatchNormalization folded into the Conv's weights"),
    _onnxscript_rewrite("matmul_add", _rules(matmul_add_to_gemm_rule),
                        "MatMul + Add (rank 2) -> Gemm"),
    _onnxscript_rewrite("gelu", [GeluErfFusion.rule(), GeluTanhFusion.rule()],
                        "erf / tanh GELU subgraph -> com.microsoft Gelu / FastGelu"),
    _onnxscript_rewrite("skip_layernorm", [SkipLayerNormFusion.rule()],
                        "Add + LayerNormalization -> com.microsoft SkipLayerNormalization"),
    _onnxscript_rewrite("conv_act", [ConvActivationFusion.rule(a) for a in ACTIVATIONS],
                        "Conv + activation -> com.microsoft FusedConv"),
    _onnxscript_rewrite("silu", [SiluFusion.rule()],
                        "x * Sigmoid(x) -> com.microsoft QuickGelu(alpha=1)"),
    _onnxscript_rewrite("conv_add", [ConvAddFusion.rule(True), ConvAddFusion.rule(False)],
                        "Conv + residual Add (+ Relu) -> com.microsoft FusedConv with a summand"),
    _onnxscript_rewrite("gemm_act", [GemmActivationFusion.rule(a)
                                     for a in ("Relu", "Sigmoid", "Tanh", "LeakyRelu")],
                        "Gemm + activation -> com.microsoft FusedGemm"),
    _onnxscript_rewrite("layernorm", [LayerNormFusion.rule()],
                        "ReduceMean / Sub / Pow / Sqrt / Div / Mul subgraph -> LayerNormalization"),
    _onnxscript_rewrite("transpose_pair", _rules(transpose_transpose_rule),
                        "two Transposes in a row -> one (or none, if they cancel)", kind="layout"),
    _onnxscript_rewrite("transpose_matmul", [TransposeIntoMatMul.rule(1), TransposeIntoMatMul.rule(0)],
                        "a Transpose's last-axes swap taken over by the MatMul it feeds "
                        "(com.microsoft FusedMatMul transA / transB)", kind="layout"),
]
