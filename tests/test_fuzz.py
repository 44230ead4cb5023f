"""Random plans of every search space on the zoo architectures and the real models that ship in
wheels: every plan builds into a valid model that ONNX Runtime loads (a plan that fails to build
is a measurement spent on nothing); structural rewrites keep the outputs; the same plan always
gives the same bytes. The thorough run (`-m slow`) asks 99% of 100 plans per model."""
import hashlib
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autotune import space as spaces
from autotune import workload, zoo
from autotune.plan import InvalidPlan, apply
from autotune.runtime import create_session
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


SPACES = ("runtime", "lossless", "cpu-int8", "full")


def build_failures(w, space_name: str, plans: int, out, seed: int = 0, check=None) -> list[str]:
    """Builds `plans` random plans of the space on the workload and loads each in ONNX Runtime;
    returns what failed, one line each (the plan and the reason). `check(plan, model)` may
    assert more of each built model."""
    space = spaces.load(space_name)
    space = space.bind(sites_of(w)) if space.needs_sites else space
    rng = np.random.default_rng(seed)
    failures = []
    for i in range(plans):
        try:
            plan = space.plan(space.sample(rng))
        except InvalidPlan:  # a combination the quantizer refuses: strategies skip it unbuilt
            continue
        try:
            c = apply(plan, w.model_path, w.data_file(), out / f"{space_name}-{i}", w.shapes)
            create_session(c.model, c.settings)
        except Exception as exc:  # every kind of failure counts against the rate
            failures.append(f"{space_name}: {plan.describe()[:120]}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        if check:
            check(plan, c.model)
        shutil.rmtree(out / f"{space_name}-{i}")
    return failures


@pytest.mark.parametrize("name", [n for n in CASES if n != "resnet50"])  # resnet50: -m slow
def test_random_plans_of_every_space_build_load_and_lossless_ones_keep_outputs(untrained, tmp_path, name):
    shape = CASES[name]
    w = workload.load(str(untrained[name]), shapes=[f"input={'x'.join(map(str, shape))}"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = _run(untrained[name], x)

    def same_outputs(plan, model):
        onnx.checker.check_model(onnx.load(model), full_check=True)
        out = _run(model, x)
        assert out.shape == reference.shape
        if not plan.lossy:
            assert np.linalg.norm(out - reference) <= 1e-4 * np.linalg.norm(reference), plan.describe()

    full = spaces.load("full").bind(sites_of(w))
    lossless = [c for c in full.site_choices
                if c.key.split(":")[1] not in ("int8_node", "int8_region", "grouped_conv")]
    every_rewrite = full.plan({c.key: c.options[-1] for c in lossless})
    same_outputs(every_rewrite, apply(every_rewrite, w.model_path, None, tmp_path / "all",
                                      w.shapes).model)
    # lossless plans build as `full` plans with INT8 left out: not sampled apart here
    failures = [f for s in ("runtime", "cpu-int8", "full")
                for f in build_failures(w, s, 2, tmp_path, check=same_outputs)]
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["zoo:resnet18", "zoo:resnet50", "zoo:mobilenet_v2", "zoo:yolo_like",
                                 "zoo:transformer_encoder", "wheel:ppocr_cls", "wheel:ppocr_rec",
                                 "wheel:ppocr_det", "wheel:minilm"])
def test_at_least_99_percent_of_random_plans_build_on_zoo_and_wheel_models(tmp_path, ref):
    """25 plans of each space (100 a model), with the workload's own data for calibration."""
    w = workload.load(ref)
    failures = [f for s in SPACES for f in build_failures(w, s, 25, tmp_path)]
    assert len(failures) <= 1, f"{len(failures)} of 100 plans failed:\n" + "\n".join(failures)


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
