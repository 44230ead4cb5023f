"""Execution providers as choices: plans, spaces, sessions, presets and the environment's masks.

Tests of a real OpenVINO session run where this machine has the provider (the plugin on an
Intel CPU, or the onnxruntime-openvino build: `./setup.sh --openvino-build`, then
`.venv-openvino/bin/python -m pytest tests/test_providers.py`); GPU tests where a GPU is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from autotune import providers, runtime
from autotune import space as spaces
from autotune.errors import UsageError
from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.plan import Plan, RuntimeChoices, session_settings

OPENVINO = providers.available()["openvino"].ok
GPU = providers.available()["cuda"].ok


def _found(**ok: bool) -> dict[str, providers.Availability]:
    return {name: providers.Availability(name, ok.get(name, name == "cpu"),
                                         "here" if ok.get(name, name == "cpu") else f"no {name}")
            for name in providers.NAMES}


def test_a_plan_carries_its_provider_and_options_through_json():
    plan = Plan(RuntimeChoices(execution_provider="openvino",
                               provider_options={"precision": "bf16", "threads": 0}))
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.digest() == plan.digest()
    assert dict(again.runtime.provider_options) == {"precision": "bf16"}  # defaults left out
    assert "openvino provider, precision=bf16" in plan.describe()
    assert plan.lossy and Plan(RuntimeChoices(execution_provider="openvino")).lossy
    assert not Plan(RuntimeChoices(execution_provider="openvino",
                                   provider_options={"precision": "f32"})).lossy


def test_cpu_plans_keep_the_json_and_digest_they_had_before_providers():
    assert "execution_provider" not in Plan().to_json()
    assert Plan().digest() == Plan.from_dict(json.loads(Plan().to_json())).digest()


@pytest.mark.parametrize("runtime, message", [
    ({"execution_provider": "openvno"}, "Did you mean `openvino`"),
    ({"execution_provider": "openvino", "provider_options": {"precison": "f32"}}, "no option"),
    ({"execution_provider": "openvino", "provider_options": {"precision": "fp8"}}, "not one of"),
    ({"execution_provider": "cpu", "provider_options": {"precision": "f32"}}, "no option"),
])
def test_unknown_providers_and_options_are_refused_with_the_fix(runtime, message):
    with pytest.raises(UsageError, match=message):
        Plan.from_dict({"runtime": runtime})


def test_session_settings_name_the_provider_its_options_and_what_it_needs():
    s = session_settings(RuntimeChoices(execution_provider="openvino",
                                        provider_options={"precision": "f32", "threads": 2}))
    assert s["providers"] == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    options = s["provider_options"][0]
    assert options["device_type"] == "CPU" and options["num_of_threads"] == "2"
    assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}
    assert "onnxruntime-ep-openvino" in s["requires"]
    cpu = session_settings(RuntimeChoices())
    assert cpu["providers"] == ["CPUExecutionProvider"] and "requires" not in cpu


def test_a_space_offers_only_the_providers_this_machine_has_and_says_why():
    space = spaces.load("runtime", machine=False)
    lacking = space.for_machine(_found())
    keys = [c.key for c in lacking.choices]
    assert "execution_provider" not in keys and not any(k.startswith("openvino.") for k in keys)
    assert all("execution_provider" not in p for p in lacking.start)
    assert any("openvino: not offered: no openvino" in n for n in lacking.notes)
    having = space.for_machine(_found(openvino=True))
    assert dict((c.key, c.options) for c in having.choices)["execution_provider"] == ("cpu", "openvino")
    assert "openvino.precision" in [c.key for c in having.choices]
    assert "tensorrt.fp16" not in [c.key for c in having.choices]
    assert {p.get("execution_provider", "cpu") for p in having.start} == {"cpu", "openvino"}
    assert any(p.get("quantization") == "static" and p.get("execution_provider") == "openvino"
               for p in having.start)  # whole-model INT8 start points on each provider


def test_a_space_with_none_of_its_providers_here_is_refused():
    space = spaces.parse({"name": "gpu-only", "choices": {"execution_provider": ["cuda"]}})
    with pytest.raises(UsageError, match="none of its execution providers"):
        space.for_machine(_found())


def test_provider_options_apply_only_with_their_provider():
    space = spaces.load("runtime", machine=False).for_machine(_found(openvino=True))
    plan = space.plan({"execution_provider": "cpu", "openvino.precision": "bf16"})
    assert plan == Plan()
    plan = space.plan({"execution_provider": "openvino", "openvino.precision": "bf16"})
    assert dict(plan.runtime.provider_options) == {"precision": "bf16"}
    assert not spaces.applies("openvino.precision", {"execution_provider": "cpu"})
    assert spaces.applies("openvino.precision", {"execution_provider": "openvino"})


def test_the_environment_masks_options_of_a_provider_not_chosen(mlp_path):
    from autotune import workload
    from autotune.env import OBSERVATION, OnnxTuneEnv

    space = spaces.parse({"name": "p", "choices": {"execution_provider": ["cpu", "openvino"],
                                                   "openvino.precision": ["default", "f32", "bf16"]}})

    class Fake:
        def measure(self, plan):
            return Measurement("ok", latency_ms=1.0, baseline_ms=1.0, speedup=1.0,
                               speedup_ci=(1.0, 1.0), accuracy=1.0, metric="top1")

    env = OnnxTuneEnv(workload.load(str(mlp_path)), space, measurer=Fake())
    env.reset(seed=0)
    env.step(0)  # cpu
    assert env.action_masks().tolist()[:3] == [True, False, False]
    env.reset(seed=0)
    obs, *_ = env.step(1)  # openvino
    assert env.action_masks().tolist()[:3] == [True, True, True]
    names = [name for name, _ in OBSERVATION]
    assert obs[names.index("chosen_provider=openvino")] == 1.0


def test_presets_add_each_provider_alone_and_with_int8(monkeypatch):
    from autotune.strategies import Presets

    monkeypatch.setattr(providers, "available", lambda: _found(openvino=True))
    plans = Presets(spaces.SearchSpace("x", "", ())).plans
    on_openvino = [p for p in plans if p.runtime.execution_provider == "openvino"]
    assert [p.quantization is not None for p in on_openvino] == [False, True]
    monkeypatch.setattr(providers, "available", lambda: _found())
    assert all(p.runtime.execution_provider == "cpu"
               for p in Presets(spaces.SearchSpace("x", "", ())).plans)


def test_a_candidate_slowed_beside_the_baseline_is_not_trusted():
    m = Measurement("ok", latency_ms=5.0, latency_alone_ms=3.0, baseline_ms=10.0,
                    baseline_alone_ms=10.0, speedup=2.0, speedup_ci=(1.9, 2.1))
    assert "this candidate ran 67% slower beside the baseline" in Objective().untrusted(m)
    fine = Measurement("ok", latency_ms=5.0, latency_alone_ms=4.8, baseline_ms=10.0,
                       baseline_alone_ms=10.0, speedup=2.0, speedup_ci=(1.9, 2.1))
    assert Objective().untrusted(fine) is None


def test_a_plugin_provider_that_is_missing_says_what_to_install(mlp_path, monkeypatch):
    settings = session_settings(RuntimeChoices(execution_provider="openvino"))
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])

    def missing(ep):
        raise ImportError("no module")

    monkeypatch.setattr(runtime, "plugin_devices", missing)
    with pytest.raises(RuntimeError, match="pip install onnxruntime-ep-openvino"):
        runtime.create_session(mlp_path, settings)
    monkeypatch.setattr(runtime, "plugin_devices", lambda ep: [])
    with pytest.raises(RuntimeError, match="offers no device"):
        runtime.create_session(mlp_path, settings)


def test_the_sites_command_lists_providers_found_and_missing(capsys):
    from autotune import cli

    assert cli.main(["sites", "zoo:digits_cnn", "--search-space", "runtime"]) == 0
    out = capsys.readouterr().out
    assert "provider  cpu: found, onnxruntime" in out
    assert "provider  openvino: " in out and "provider  tensorrt: " in out


@pytest.mark.skipif(not OPENVINO, reason=providers.available()["openvino"].how)
def test_openvino_measures_exports_and_loads(tmp_path):
    from autotune import workload
    from autotune.measure import Measurer, Protocol

    w = workload.load("zoo:digits_cnn")
    plan = Plan(RuntimeChoices(execution_provider="openvino", provider_options={"precision": "f32"}))
    m = Measurer(w, Protocol(min_runs=5, min_seconds=0.2, max_seconds=2)).measure(plan)
    assert m.ok, m.reason
    assert m.session_seconds > 0 and m.latency_alone_ms > 0 and m.accuracy > 0.9
    session = runtime.create_session(w.model_path, session_settings(plan.runtime))
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"
    out = session.run(None, {"input": np.zeros((1, 1, 28, 28), np.float32)})[0]
    assert out.shape == (1, 10)


@pytest.mark.skipif(not GPU, reason=providers.available()["cuda"].how)
@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_gpu_providers_run_a_session(name, mlp_path):
    if not providers.available()[name].ok:
        pytest.skip(providers.available()[name].how)
    settings = session_settings(RuntimeChoices(execution_provider=name))
    session = runtime.create_session(mlp_path, settings)
    assert session.get_providers()[0] == providers.get(name).ep
    assert session.run(None, {"x": np.zeros((1, 16), np.float32)})[0].shape == (1, 10)


def test_the_readme_loader_is_the_one_every_tuned_model_directory_shows():
    from pathlib import Path

    from autotune.export import LOAD_LINES

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert LOAD_LINES.replace("MODEL", "runs/digits/best/model.onnx").replace(
        "SESSION", "runs/digits/best/session.json") in readme


def test_entropy_is_not_offered_where_the_quantizer_cannot_take_its_ranges(monkeypatch):
    from autotune import quantize

    monkeypatch.setattr(quantize, "reads_ranges", lambda: False)
    space = spaces.load("cpu-int8", machine=False).for_machine(_found())
    options = dict((c.key, c.options) for c in space.choices)["quantization.calibration"]
    assert options == ("minmax", "percentile")
    assert any("calibration entropy: not offered" in n for n in space.notes)
    monkeypatch.setattr(quantize, "reads_ranges", lambda: True)
    space = spaces.load("cpu-int8", machine=False).for_machine(_found())
    assert "entropy" in dict((c.key, c.options) for c in space.choices)["quantization.calibration"]


class ProviderFake:
    """OpenVINO is twice as fast, and loses accuracy unless in f32; each INT8 site adds 10%."""

    def __init__(self, w):
        self.workload = w

    def measure(self, plan):
        r = plan.runtime
        options = dict(r.provider_options)
        speed = (2.0 if r.execution_provider == "openvino" else 1.0) * (1 + 0.1 * len(plan.int8_sites))
        lossy = r.execution_provider == "openvino" and options.get("precision", "default") != "f32"
        return Measurement("ok", latency_ms=10 / speed, baseline_ms=10.0, speedup=speed,
                           speedup_ci=(speed * 0.99, speed * 1.01), runs=20, peak_memory_mb=10.0,
                           model_size_mb=1.0, accuracy=0.9 if lossy else 0.95, metric="top1")

    def build(self, plan, out_dir):
        from autotune.plan import Candidate

        return Candidate(self.workload.model_path, session_settings(plan.runtime))


@pytest.mark.parametrize("strategy", ["tpe", "random", "nsga2"])
def test_optuna_and_random_search_the_provider_as_a_dimension(strategy, mlp_path, tmp_path):
    from autotune import workload
    from autotune.tune import tune

    space = spaces.parse({"name": "p", "choices": {
        "execution_provider": ["cpu", "openvino"], "openvino.precision": ["default", "f32", "bf16"],
        "intra_op_threads": [0, 1]}, "start": [{"execution_provider": "openvino"}]})
    w = workload.load(str(mlp_path))
    result = tune(w, space, strategy=strategy, budget=10, out=tmp_path / strategy, quiet=True,
                  measurer=ProviderFake(w), objective=Objective(max_accuracy_drop=0.01))
    assert result.best is not None
    assert result.best.plan.runtime.execution_provider == "openvino"
    assert dict(result.best.plan.runtime.provider_options) == {"precision": "f32"}


def test_the_greedy_runs_its_sites_on_the_provider_of_its_fastest_start_point(mlp_path, tmp_path):
    from autotune import workload
    from autotune.space import Choice, SearchSpace
    from autotune.tune import tune

    space = SearchSpace("g", "", (Choice("site:int8_node:n0", ("fp32", "int8")),), start=(
        {"execution_provider": "openvino"},  # over the limit
        {"execution_provider": "openvino", "openvino.precision": "f32"}))
    w = workload.load(str(mlp_path))
    result = tune(w, space, strategy="greedy", budget=5, out=tmp_path / "g", quiet=True,
                  measurer=ProviderFake(w), objective=Objective(max_accuracy_drop=0.01))
    plan = result.best.plan
    assert plan.int8_sites == ["int8_node:n0"] and plan.runtime.execution_provider == "openvino"
    assert dict(plan.runtime.provider_options) == {"precision": "f32"}
