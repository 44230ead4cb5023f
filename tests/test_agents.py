"""`autotune agent train`: one policy over several models on estimated measurements, applied
to another model with `tune --strategy ppo --policy`. Small models, few steps; no timing
asserted."""
import json

import pytest

from autotune import space as spaces
from autotune import workload
from autotune.agents import Surrogate, train
from autotune.cli import main
from autotune.plan import Plan, Quantization
from autotune.tune import sites_of
from tests.conftest import mlp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sb3: small rollouts


@pytest.fixture
def cache():
    """One measurement cache for the whole test session (the private one of conftest)."""
    from autotune.tune import default_cache

    return default_cache()


def _bound(w):
    return spaces.load("cpu-int8").bind(sites_of(w))


def test_the_surrogate_adds_up_the_errors_of_sites_measured_alone(mlp_path, cache):
    w = workload.load(str(mlp_path))
    s = _bound(w)
    surrogate = Surrogate(w, s, cache)
    lossy = [site.id for site in s.sites if site.lossy]
    assert lossy and set(surrogate.errors) == {(sid, "int8") for sid in lossy}
    both = surrogate.measure(Plan(sites={sid: "int8" for sid in lossy}))
    alone = [surrogate.measure(Plan(sites={sid: "int8"})) for sid in lossy]
    drop = lambda m: m.output_error if m.metric == "fidelity" else surrogate.baseline.accuracy - m.accuracy
    assert drop(both) == pytest.approx(sum(drop(m) for m in alone))
    assert both.speedup == pytest.approx(surrogate.estimator.speedup(both_plan := Plan(
        sites={sid: "int8" for sid in lossy}))) and both_plan.int8_sites
    assert surrogate.measure(Plan()).speedup == pytest.approx(1.0)


def test_the_surrogate_scales_site_errors_by_the_quantizer_settings(mlp_path, cache):
    w = workload.load(str(mlp_path))
    s = _bound(w)
    surrogate = Surrogate(w, s, cache)
    # cpu-int8 offers per-channel x 3 calibrations x 2 activation types: each measured whole
    assert len(surrogate.whole) == 12
    default = surrogate.whole[(True, "minmax", "uint8")]
    q = Quantization(mode="static", per_channel=False, calibration="percentile")
    key = (False, "percentile", "uint8")
    assert surrogate.accuracy_drop(Plan(quantization=q)) == surrogate.whole[key]
    sid = next(site.id for site in s.sites if site.lossy)
    alone = surrogate.errors[(sid, "int8")]
    scaled = surrogate.accuracy_drop(Plan(quantization=q, sites={sid: "int8"}))
    assert scaled == pytest.approx(alone * surrogate.whole[key] / default)
    assert surrogate.accuracy_drop(Plan(sites={sid: "int8"})) == pytest.approx(alone)


def test_one_policy_trains_over_two_models_and_tunes_a_third(tmp_path, mlp_path, cache):
    other = mlp(tmp_path / "other.onnx", seed=1)
    policy = tmp_path / "policy.zip"
    plans = train([workload.load(str(mlp_path)), workload.load(str(other))],
                  spaces.load("cpu-int8"), policy, steps=256, quiet=True,
                  tensorboard=tmp_path / "tb", cache=cache)
    assert policy.is_file() and len(plans) == 2
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))  # the training curves
    assert all(p["estimated_speedup"] > 0 and p["estimated_accuracy_drop"] >= 0 for p in plans)
    new = mlp(tmp_path / "new.onnx", seed=2)
    out = tmp_path / "run"
    assert main(["tune", str(new), "--strategy", "ppo", "--policy", str(policy), "--budget", "2",
                 "--search-space", "cpu-int8", "--out", str(out), "-q"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["strategy"]["policy"] == str(policy)


def test_agent_train_cli_writes_the_policy_and_says_how_to_apply_it(tmp_path, mlp_path, capsys):
    policy = tmp_path / "p.zip"
    assert main(["agent", "train", "--workloads", str(mlp_path), "--steps", "64",
                 "--out", str(policy), "-q"]) == 0
    said = capsys.readouterr().out
    assert policy.is_file() and "--strategy ppo --policy" in said and "mlp" in said


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--search-space", "nope"], "nope"),
])
def test_agent_train_refuses_bad_input_in_one_line(tmp_path, mlp_path, capsys, argv, message):
    code = main(["agent", "train", "--workloads", str(mlp_path), "--out", str(tmp_path / "p.zip"),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_agent_train_refuses_a_missing_workload(tmp_path, capsys):
    code = main(["agent", "train", "--workloads", str(tmp_path / "none.yaml"),
                 "--out", str(tmp_path / "p.zip")])
    assert code == 2 and "none.yaml" in capsys.readouterr().err


def test_the_accuracy_penalty_rises_while_training_then_holds():
    from autotune.agents import PENALTY, penalty_weight

    weights = [penalty_weight(step, 1000) for step in range(0, 1001, 50)]
    assert weights[0] == PENALTY["start"] and weights[-1] == PENALTY["end"]
    assert weights == sorted(weights) and penalty_weight(int(PENALTY["ramp"] * 1000), 1000) == PENALTY["end"]
