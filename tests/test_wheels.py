"""The real workloads (wheel:NAME): models from PyPI wheels with data made in code, judged by
their task metrics, each through the environment and the experiment launcher."""
import numpy as np
import pytest

from autotune import experiment, workload
from autotune.env import OnnxTuneEnv
from autotune.zoo import wheels
from tests.test_env import FakeMeasurer

REAL = ["ppocr_cls", "ppocr_rec", "ppocr_det", "minilm"]
METRIC = {"ppocr_cls": "top1", "ppocr_rec": "ctc_text", "ppocr_det": "detection",
          "minilm": "cosine"}


@pytest.mark.parametrize("name", REAL)
def test_a_real_workload_has_its_task_metric_and_a_held_out_split(name):
    w = workload.load(f"wheel:{name}")
    assert w.metric.name == METRIC[name] and w.splits == ("cal", "eval", "holdout")
    with np.load(w.data_file()) as f:
        counts = {part: len(f[f"{part}:{next(iter(w.shapes))}"]) for part in w.splits}
        labels = {k: f[k] for k in f.files if k.endswith("labels")}
    assert counts == {"cal": w.data.calibration, "eval": w.data.evaluation,
                      "holdout": w.data.holdout}
    if name == "minilm":
        assert labels == {}  # cosine is against the FP32 embeddings
    else:
        assert len(labels["labels"]) == w.data.evaluation
        assert len(labels["holdout_labels"]) == w.data.holdout


def test_held_out_data_differ_from_what_the_search_sees():
    w = workload.load("wheel:ppocr_rec")
    with np.load(w.data_file()) as f:
        seen, held = set(f["labels"].ravel()), set(f["holdout_labels"].ravel())
    assert len(seen & held) < 0.1 * len(held)  # a few short lines repeat by chance


@pytest.mark.parametrize("name", REAL)
def test_a_real_workload_runs_through_the_environment(name):
    env = OnnxTuneEnv(workload=f"wheel:{name}", search_space="cpu-int8", measurer=FakeMeasurer())
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    terminated, steps = False, 0
    while not terminated:
        mask = env.action_masks()
        obs, reward, terminated, _, info = env.step(int(np.flatnonzero(mask)[-1]))
        steps += 1
    assert env.observation_space.contains(obs) and np.isfinite(reward) and steps > 1


def test_the_data_source_wheel_needs_a_wheel_model_with_data(mlp_path):
    with pytest.raises(Exception, match="data.source wheel needs"):
        workload.load(str(mlp_path), workload={"model": str(mlp_path), "data": {"source": "wheel"}})
    assert set(REAL) <= set(wheels.MODELS)


@pytest.mark.slow
def test_every_real_workload_runs_through_an_experiment(tmp_path):
    from pathlib import Path

    from autotune.cli import main

    spec = Path(__file__).resolve().parent.parent / "experiments" / "real-smoke.yaml"
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "real"), "-q"]) == 0
    assert main(["report", str(tmp_path / "real"), "--out", str(tmp_path / "table")]) == 0
    table = (tmp_path / "table" / "table.md").read_text()
    for name in REAL:
        assert f"## {name}" in table
