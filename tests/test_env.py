"""The Gymnasium environment, with a deterministic fake measurer (no timing here)."""
import math

import gymnasium
import numpy as np
import pytest

from autotune.env import MAX_OPTIONS, OBSERVATION, OnnxTuneEnv
from autotune.measure import Measurement
from autotune.objective import Lagrangian, LogSpeedup, MemoryReduction, Reward, make_reward
from autotune.plan import Plan


class FakeMeasurer:
    """Static INT8: 2x and 0.5 points off; dynamic: 1.5x, 3 points off; the LAYOUT level fails;
    per site chosen: 2% faster. Deterministic, so episodes can be compared."""

    def __init__(self):
        self.calls = 0

    def measure(self, plan: Plan) -> Measurement:
        self.calls += 1
        if plan.runtime.graph_optimization_level == "layout":
            return Measurement.failed("model refused by ONNX Runtime: fake")
        speed, acc = 1.0, 0.95
        if plan.quantization is not None:
            speed, acc = (2.0, 0.945) if plan.quantization.mode == "static" else (1.5, 0.92)
        speed *= 1.02 ** len(plan.sites)
        return Measurement("ok", latency_ms=10 / speed, latency_ci=(9 / speed, 11 / speed),
                           baseline_ms=10.0, baseline_ci=(9.0, 11.0), speedup=speed,
                           speedup_ci=(speed * 0.98, speed * 1.02), runs=20,
                           peak_memory_mb=10.0 / speed, accuracy=acc, metric="top1")


def _env(mlp_path, space="runtime", **kw):
    return OnnxTuneEnv(workload=str(mlp_path), search_space=space, measurer=FakeMeasurer(), **kw)


def _play(env, actions):
    obs, _ = env.reset(seed=0)
    out = []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, terminated, info))
        if terminated:
            break
    return out


def test_gymnasium_make_finds_the_registered_environment(mlp_path):
    env = gymnasium.make("autotune/OnnxTune-v1", workload=str(mlp_path), search_space="runtime",
                         measurer=FakeMeasurer())
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.action_space.n == MAX_OPTIONS


def test_gymnasium_and_stable_baselines_checkers_pass(mlp_path):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(_env(mlp_path, "full"), skip_render_check=True)
    sb3_check_env(_env(mlp_path, "full"), warn=True)


def test_an_episode_chooses_every_choice_once_and_is_paid_at_its_end(mlp_path):
    env = _env(mlp_path)
    steps = _play(env, [0] * len(env.choices))
    assert len(steps) == len(env.choices) and steps[-1][2]
    assert all(r == 0.0 for _, r, _, _ in steps[:-1])
    last = steps[-1]
    assert last[3]["plan"] == Plan().to_dict() and last[1] == pytest.approx(0.0)  # the baseline
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_masks_allow_only_options_that_apply(mlp_path):
    env = _env(mlp_path)
    env.reset(seed=0)
    first = env.choices[0]
    assert env.action_masks().sum() == len(first.options)
    keys = [c.key for c in env.choices]
    for key in keys[:keys.index("quantization")]:
        env.step(0)
    env.step(0)  # quantization: none
    assert env.action_masks().tolist() == [True] + [False] * (MAX_OPTIONS - 1)  # its settings


def test_a_site_conflicting_with_an_earlier_choice_is_masked(mlp_path):
    env = _env(mlp_path, "full")
    env.reset(seed=0)
    keys = [c.key for c in env.choices]
    node = next(i for i, k in enumerate(keys) if k.startswith("site:int8_node:"))
    region = next(i for i, k in enumerate(keys) if k.startswith("site:int8_region:"))
    for i in range(region):
        option = env.choices[i].options.index("int8_dynamic") if i == node else 0
        env.step(option)
    mask = env.action_masks()
    assert mask[0] and not mask[env.choices[region].options.index("int8")]


def test_a_failed_candidate_is_a_penalized_reward_with_its_reason(mlp_path):
    env = _env(mlp_path)
    actions = [c.options.index("layout") if c.key == "graph_optimization_level" else 0
               for c in env.choices]
    *_, (obs, reward, done, info) = _play(env, actions)
    assert done and reward == Reward.FAILED and "refused" in info["reason"]


def test_invalid_actions_are_taken_as_keep_and_flagged(mlp_path):
    env = _env(mlp_path)
    env.reset(seed=0)
    _, _, _, _, info = env.step(MAX_OPTIONS - 1)  # the first choice has 5 options
    assert info["invalid_action"] and env.actions == [0]


def test_same_actions_same_observations_and_reward(mlp_path):
    env = _env(mlp_path, "full")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = []
    while len(actions) < len(env.choices):
        a = int(rng.choice(np.flatnonzero(env.action_masks())))
        actions.append(a)
        env.step(a)
    first, second = _play(_env(mlp_path, "full"), actions), _play(_env(mlp_path, "full"), actions)
    for (o1, r1, *_), (o2, r2, *_) in zip(first, second):
        assert np.array_equal(o1, o2) and r1 == r2


def test_the_state_rebuilds_the_plan(mlp_path):
    from autotune import space as spaces

    env = _env(mlp_path)
    actions = [1 if len(c.options) > 1 else 0 for c in env.choices]
    *_, (_, reward, _, info) = _play(env, actions)
    state = env.state
    space = spaces.parse(state["search_space"])
    assignment = {c.key: c.options[a] for c, a in zip(space.choices, state["actions"])}
    assert space.plan(assignment).to_dict() == info["plan"] and state["reward"] == reward


def test_every_observation_index_is_documented_and_in_range(mlp_path):
    env = _env(mlp_path, "full")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(OBSERVATION),) and len({n for n, _ in OBSERVATION}) == len(OBSERVATION)
    assert all(desc for _, desc in OBSERVATION)
    assert obs.min() >= 0 and obs.max() <= 1


def _m(speedup=1.0, acc=0.95, peak=10.0):
    return Measurement("ok", speedup=speedup, accuracy=acc, metric="top1", peak_memory_mb=peak)


def test_rewards_are_positive_exactly_when_the_baseline_is_beaten():
    r = LogSpeedup(max_accuracy_drop=0.01)
    r.reset(_m())
    assert r.update(_m(1.5)) == pytest.approx(math.log(1.5))
    assert r.update(_m(0.8)) < 0 and r.update(_m(1.0)) == 0
    assert r.update(Measurement.failed("x")) == Reward.FAILED
    m = MemoryReduction()
    m.reset(_m())
    assert m.update(_m(peak=5.0)) == pytest.approx(math.log(2))


def test_an_accuracy_violation_is_penalized_in_proportion():
    r = LogSpeedup(max_accuracy_drop=0.01)
    r.reset(_m())
    small, large = r.update(_m(3.0, acc=0.935)), r.update(_m(3.0, acc=0.925))
    assert 0 > small > large >= Reward.FAILED  # 0.5 and 1.5 limits over


def test_the_training_reward_keeps_the_speed_of_a_plan_over_the_limit():
    r = Lagrangian(LogSpeedup(max_accuracy_drop=0.01), weight=0.2)
    r.reset(_m())
    assert r.update(_m(3.0, acc=0.945)) == pytest.approx(math.log(3.0))  # within: as LogSpeedup
    over = r.update(_m(3.0, acc=0.935))  # half a limit over: log 3 - 0.2 * log 1.5
    assert over == pytest.approx(math.log(3.0) - 0.2 * math.log(1.5))
    assert over > r.update(_m(2.0, acc=0.935))  # still paid for speed
    assert r.update(_m(3.0, acc=0.0)) > r.update(_m(2.0, acc=0.0))  # even 95 limits over
    r.weight = 10.0
    assert r.update(_m(3.0, acc=0.935)) < 0 and r.update(Measurement.failed("x")) == Reward.FAILED


def test_weighted_rewards_combine_and_bad_names_are_clear():
    from autotune.errors import UsageError

    w = make_reward("weighted:log_speedup=0.5,memory=0.5")
    w.reset(_m())
    assert w.update(_m(2.0, peak=5.0)) == pytest.approx(math.log(2))
    with pytest.raises(UsageError, match="no reward `speed`"):
        make_reward("speed")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_maskable_ppo_trains_for_64_steps(mlp_path):
    from sb3_contrib import MaskablePPO

    env = _env(mlp_path)
    model = MaskablePPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, verbose=0)
    model.learn(64)
    assert env.measurer.calls >= 64 // len(env.choices)


def test_a_saved_state_replays_to_the_same_plan(mlp_path, tmp_path):
    import json

    from autotune.env import replay, save_state

    env = _env(mlp_path, "full")
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    state = json.loads(save_state(env, tmp_path / "state.json").read_text())
    w, plan, reward = replay(state)
    assert plan.to_dict() == info["plan"] == state["plan"] and reward.name == "log_speedup"


def test_replay_rebuilds_and_revalidates_for_real(mlp_path, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from autotune.env import save_state

    env = OnnxTuneEnv(workload=str(mlp_path), search_space="runtime")  # the real measurer
    env.reset(seed=0)
    for c in env.choices:
        env.step(c.options.index("extended") if c.key == "graph_optimization_level" else 0)
    state = save_state(env, tmp_path / "state.json")
    autotune = Path(sys.executable).parent / "autotune"
    proc = subprocess.run([str(autotune), "replay", str(state), "--out", str(tmp_path / "c"),
                           "--validate"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert lines[0] == "plan: graph_optimization_level=extended"
    assert (tmp_path / "c/model.onnx").is_file() and (tmp_path / "c/session.json").is_file()
    assert (proc.returncode, lines[-1].split(":")[0]) in ((0, "holds"), (1, "does not hold"))
    bad = subprocess.run([str(autotune), "replay", str(tmp_path / "c/plan.json")],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "not an environment state" in bad.stderr
