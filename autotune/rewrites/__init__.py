"""Rewrites: small named transformations, each applying one option at one site.

A rewrite family finds its sites on a prepared model (`prepare`) and applies itself at one
anchor node at a time, so a Plan can turn each site on or off. Replacement nodes are named
after their anchor (`<anchor>/<rule>`), so names stay stable and later choices (precision)
can follow the nodes a rewrite replaced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx
import onnx_ir as ir


@dataclass(frozen=True)
class Match:
    anchor: str  # the node a site is named after
    nodes: tuple[str, ...]  # every node the rewrite replaces
    options: tuple[str, ...] = ()  # where a site has fewer options than its rule


@dataclass(frozen=True)
class Rewrite:
    name: str
    kind: str  # fusion | grouping | layout
    lossy: bool
    find: Callable[[ir.Model], list[Match]]
    apply: Callable[[ir.Model, Match, str], list[ir.Node]]  # (model, site, option) -> new nodes
    doc: str = ""
    # (anchor, reason) for near misses: nodes the pattern matched but a check turned down
    rejected: Callable[[ir.Model], list[tuple[str, str]]] = lambda model: []
    options: tuple[str, ...] = ("keep", "apply")  # the first leaves the model as it is


def prepare(model: onnx.ModelProto) -> ir.Model:
    """The model in onnx-ir with Constant nodes lifted to initializers: the one cleanup step
    every rewrite's patterns assume (exporters emit constants both ways)."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    m = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(m)
    return m


def registry() -> dict[str, Rewrite]:
    from autotune.rewrites import attention, fusion, grouping, layout

    return {r.name: r for r in (*fusion.REWRITES, *attention.REWRITES, *grouping.REWRITES,
                                *layout.REWRITES)}


def rename(nodes: list[ir.Node], anchor: str, rule: str) -> None:
    for k, node in enumerate(nodes):
        node.name = f"{anchor}/{rule}" + (f"_{k}" if k else "")


def site_nodes(model: ir.Model, site: Match, rule: str) -> list[ir.Node]:
    """The nodes of a site, in the site's order; a clear error if an earlier rewrite took one."""
    by_name = {n.name: n for n in model.graph}
    missing = [n for n in site.nodes if n not in by_name]
    if missing:
        raise ValueError(f"{rule} site {site.anchor}: node {missing[0]} is gone (an earlier "
                         f"rewrite replaced it)")
    return [by_name[n] for n in site.nodes]
