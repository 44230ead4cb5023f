"""Fusion and layout rewrites (lossless): onnxscript's rules where they fit, one site per match."""
from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchStatus
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion, GeluTanhFusion
from onnxscript.rewriter.rules.common import (fuse_batchnorm_into_conv_rule,
                                              matmul_add_to_gemm_rule, transpose_transpose_rule)

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
        return found

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
    _onnxscript_rewrite("transpose_pair", _rules(transpose_transpose_rule),
                        "two Transposes in a row -> one (or none, if they cancel)", kind="layout"),
]
