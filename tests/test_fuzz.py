"""Random plans from full.yaml on zoo architectures: every candidate is a valid model that ORT
runs; structural rewrites keep the outputs; the same plan always gives the same bytes."""
import hashlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autotune import space as spaces
from autotune import workload, zoo
from autotune.plan import apply
from autotune.tune import sites_of

# Small inputs keep this fast; the architectures (and so the sites) are the zoo's.
CASES = {"resnet18": (1, 3, 32, 32), "resnet50": (1, 3, 32, 32), "mobilenet_v2": (1, 3, 32, 32), "yolo_like": (1, 3, 64, 64),
         "transformer_encoder": (1, 64, 4), "digits_cnn": (1, 1, 28, 28)}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    import torch

    from autotune.zoo.train import export_onnx

    out = {}
    torch.manual_seed(0)
    for name, shape in CASES.items():
        path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(zoo.get(name).build(), torch.randn(shape), path)
        out[name] = path
    return out


def _run(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("name", list(CASES))
def test_random_full_plans_give_valid_models_and_lossless_ones_equal_outputs(untrained, tmp_path, name):
    shape = CASES[name]
    w = workload.load(str(untrained[name]), shapes=[f"input={'x'.join(map(str, shape))}"])
    space = spaces.load("full").bind(sites_of(w))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    reference = _run(untrained[name], x)
    lossless = [c for c in space.site_choices
                if c.key.split(":")[1] not in ("int8_node", "int8_region", "grouped_conv")]
    plans = [space.plan({c.key: c.options[-1] for c in lossless})]  # every lossless rewrite at once
    plans += [space.plan({**space.sample(rng), "quantization": "none"}) for _ in range(2)]
    for i, plan in enumerate(plans):
        try:
            c = apply(plan, w.model_path, w.data_file(), tmp_path / str(i), w.shapes)
        except ValueError as exc:
            # ORT's quantizer cannot do every node selection (after contrib-op fusions it can
            # leave chosen nodes in float); then the build must fail loudly, with the nodes.
            assert plan.lossy and ("left in float" in str(exc) or "quantiz" in str(exc)), exc
            continue
        onnx.checker.check_model(onnx.load(c.model), full_check=True)
        out = _run(c.model, x)
        assert out.shape == reference.shape
        if not plan.lossy:
            assert np.linalg.norm(out - reference) <= 1e-4 * np.linalg.norm(reference), plan.describe()


def test_the_same_plan_gives_the_same_bytes(untrained, tmp_path):
    w = workload.load(str(untrained["transformer_encoder"]))
    space = spaces.load("full").bind(sites_of(w))
    plan = space.plan({c.key: c.options[-1] for c in space.site_choices if "int8" not in c.key})
    assert plan.sites
    digests = {hashlib.sha256(apply(plan, w.model_path, None, tmp_path / str(i), w.shapes)
                              .model.read_bytes()).hexdigest() for i in range(3)}
    assert len(digests) == 1


@pytest.mark.parametrize("name", ["resnet50", "transformer_encoder", "yolo_like"])
def test_sites_of_all_four_kinds_on_the_zoo_architectures(untrained, name):
    w = workload.load(str(untrained[name]), shapes=[f"input={'x'.join(map(str, CASES[name]))}"])
    assert {s.kind for s in sites_of(w)} == {"fusion", "grouping", "layout", "precision"}
