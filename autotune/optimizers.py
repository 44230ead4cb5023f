"""The names of the graph optimizers the installed ONNX Runtime has.

ORT ignores an unknown name in `disabled_optimizers` without a word, so every name a plan
disables is checked here first. Graph transformers are read from ORT's own verbose log (once
per ORT version, cached); rewrite rules are not logged, so their names come from ORT's source.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

from autotune.errors import UsageError, did_you_mean
from autotune.paths import cache_dir

# Rewrite rules inside ORT's rule-based transformers (onnxruntime/core/optimizer/*.h).
RULE_NAMES = frozenset({
    "EliminateIdentity", "EliminateSlice", "EliminateDropout", "UnsqueezeElimination",
    "ExpandElimination", "CastElimination", "NoopElimination", "DivMulFusion", "FuseReluClip",
    "GemmSumFusion", "GemmTransposeFusion", "NotWhereFusion", "ConvAddFusion", "ConvBNFusion",
    "ConvMulFusion", "PadFusion", "MaxpoolPadFusion", "ClipQuantFusion", "ReluQuantFusion",
    "LabelEncoderFusion", "SqueezeElimination",
})

_PROBE = r"""
import onnx, onnxruntime as ort
m = onnx.parser.parse_model('<ir_version: 8, opset_import: ["": 17]> g (float[1,4] x) => (float[1,4] y) { y = Relu(x) }')
so = ort.SessionOptions(); so.log_severity_level = 0
ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
"""


def transformer_names() -> frozenset[str]:
    import onnxruntime

    path = cache_dir() / f"ort-optimizers-{onnxruntime.__version__}.json"
    if path.exists():
        return frozenset(json.loads(path.read_text()))
    log = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    # "Applying graph transformer X" (ORT 1.32), "GraphTransformer X modified: ..." (1.24)
    names = sorted(set(re.findall(r"(?:Applying graph transformer|GraphTransformer) (\S+)",
                                  log.stdout + log.stderr)))
    if names:
        path.write_text(json.dumps(names))
    return frozenset(names)


def known_names() -> frozenset[str]:
    return transformer_names() | RULE_NAMES


def check(names: tuple[str, ...] | list[str]) -> None:
    """Raises UsageError for a name the installed ORT would silently ignore."""
    import onnxruntime

    known = known_names()
    for name in names:
        if name not in known:
            raise UsageError(f"onnxruntime {onnxruntime.__version__} has no graph optimizer named "
                             f"`{name}`, so disabling it would do nothing.{did_you_mean(name, known)}")
