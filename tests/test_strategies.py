"""Search logic of every strategy, with a deterministic fake measurer (no timing here)."""
import pytest

from autotune import workload
from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.plan import Candidate, Plan, session_settings
from autotune.space import Choice, SearchSpace
from autotune.store import RunStore
from autotune.strategies import NAMES
from autotune.tune import tune

N_SITES = 10
COST = {f"int8_node:n{i}": 0.0005 * (i + 1) for i in range(N_SITES)}  # accuracy each site costs


class SiteFake:
    """Each INT8 site makes the model 10% faster and costs COST[site] of accuracy; costs add."""

    def __init__(self, w):
        self.workload, self.seen = w, set()

    def measure(self, plan: Plan) -> Measurement:
        cached = plan.digest() in self.seen
        self.seen.add(plan.digest())
        chosen = plan.int8_sites
        speed = 1.0 + 0.1 * len(chosen)
        acc = 0.95 - sum(COST[s] for s in chosen)
        return Measurement("ok", latency_ms=10 / speed, baseline_ms=10.0, speedup=speed,
                           speedup_ci=(speed * 0.99, speed * 1.01), runs=20, peak_memory_mb=10.0,
                           model_size_mb=1.0, accuracy=acc, metric="top1", cached=cached)

    def evaluate(self, plan: Plan) -> Measurement:
        m = self.measure(plan)
        return Measurement("ok", accuracy=m.accuracy, metric="top1", timed=False, cached=m.cached)

    def build(self, plan, out_dir):
        return Candidate(self.workload.model_path, session_settings(plan.runtime))


SPACE = SearchSpace("sites", "", tuple(Choice(f"site:{s}", ("fp32", "int8")) for s in COST))


@pytest.fixture
def w(mlp_path):
    return workload.load(str(mlp_path))


def _run(w, tmp_path, strategy, budget, limit=0.01):
    return tune(w, SPACE, strategy=strategy, budget=budget, out=tmp_path / strategy, quiet=True,
                measurer=SiteFake(w), objective=Objective(max_accuracy_drop=limit))


def test_greedy_finds_the_most_int8_within_the_limit(w, tmp_path):
    # Cheapest first: 0.0005 + 0.001 + ... ; the first 5 sites cost 0.0075, 6 cost 0.0105.
    result = _run(w, tmp_path, "greedy", budget=30)
    assert len(result.best.plan.int8_sites) == 5
    assert result.best.measurement.speedup == pytest.approx(1.5)


def test_greedy_measures_start_points_first_and_goes_on(w, tmp_path):
    space = SearchSpace("sites", "", SPACE.choices, start=({"quantization": "static"},))
    result = tune(w, space, strategy="greedy", budget=30, out=tmp_path / "g", quiet=True,
                  measurer=SiteFake(w), objective=Objective(max_accuracy_drop=0.01))
    assert result.trials[0].plan.quantization is not None and not result.trials[0].plan.sites
    assert len(result.best.plan.int8_sites) == 5


def test_greedy_stops_when_it_has_nothing_left(w, tmp_path):
    result = _run(w, tmp_path, "greedy", budget=1000)
    assert result.measurements_used < 2 * N_SITES + 5


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_strategy_respects_budget_and_limit_and_never_repeats(w, tmp_path, name):
    result = _run(w, tmp_path, name, budget=8, limit=0.003)
    assert result.measurements_used <= 8
    digests = [(t.plan.digest(), t.measurement.timed) for t in result.trials]
    assert len(digests) == len(set(digests))
    if result.best is not None:
        assert 0.95 - result.best.measurement.accuracy <= 0.003 + 1e-9


def test_greedy_tries_lossless_sites_rule_by_rule_and_measures_only_lossy_ones_alone(w, tmp_path):
    from autotune.sites import Site

    lossless = [Site(f"gelu:g{i}", "fusion", "gelu", ("keep", "apply"), False, (f"g{i}",))
                for i in range(6)]
    space = SearchSpace("sites", "", SPACE.choices + tuple(
        Choice(f"site:{s.id}", s.options) for s in lossless), sites=tuple(lossless))
    result = tune(w, space, strategy="greedy", budget=N_SITES + 2, out=tmp_path / "g", quiet=True,
                  measurer=SiteFake(w), objective=Objective(max_accuracy_drop=0.01))
    first, *rest = [t.plan for t in result.trials]
    assert {sid for sid, _ in first.sites} == {s.id for s in lossless}  # the rule at once
    singles = [p for p in rest if len(p.sites) == 1]
    assert len(singles) == N_SITES and all(p.int8_sites for p in singles)


class QuantizerFake(SiteFake):
    """Whole-model INT8 costs 5 points with minmax calibration and 2 with percentile."""

    def measure(self, plan: Plan) -> Measurement:
        m = super().measure(plan)
        if plan.quantization is None or plan.int8_sites:
            return m
        acc = 0.90 if plan.quantization.calibration == "minmax" else 0.93
        return Measurement("ok", latency_ms=3.0, baseline_ms=10.0, speedup=3.3,
                           speedup_ci=(3.2, 3.4), runs=20, peak_memory_mb=10.0, model_size_mb=1.0,
                           accuracy=acc, metric="top1", cached=m.cached)


def test_greedy_quantizes_sites_with_the_settings_of_the_most_accurate_start_point(w, tmp_path):
    starts = ({"quantization": "static"},
              {"quantization": "static", "quantization.calibration": "percentile"})
    space = SearchSpace("sites", "", SPACE.choices + (
        Choice("quantization", ("none", "static")),
        Choice("quantization.calibration", ("minmax", "percentile"))), start=starts)
    result = tune(w, space, strategy="greedy", budget=6, out=tmp_path / "g", quiet=True,
                  measurer=QuantizerFake(w), objective=Objective(max_accuracy_drop=0.01))
    per_site = [t.plan for t in result.trials if t.plan.int8_sites]
    assert per_site and all(p.quantization.calibration == "percentile" for p in per_site)


def test_presets_are_the_ort_levels_and_whole_model_int8_then_nothing(w, tmp_path):
    result = _run(w, tmp_path, "presets", budget=20)
    described = [t.plan.describe() for t in result.trials]
    assert len(described) == 6 and len(set(described)) == 6
    levels = [t.plan.runtime.graph_optimization_level for t in result.trials[:4]]
    assert levels == ["disable", "basic", "extended", "layout"]
    assert [t.plan.quantization.mode for t in result.trials[4:]] == ["dynamic", "static"]


@pytest.mark.parametrize("name", ["tpe", "cmaes", "gp", "qmc", "nsga2"])
def test_optuna_strategies_state_their_sampler_settings(w, tmp_path, name):
    import json

    _run(w, tmp_path, name, budget=3)
    settings = json.loads((tmp_path / name / "run.json").read_text())["strategy"]
    assert settings["name"] == name and settings["sampler"].endswith("Sampler")
    assert settings["seed"] == 0 and settings["optuna"]


def test_a_sampler_that_repeats_itself_gives_way_to_random_proposals(w, tmp_path, monkeypatch):
    import optuna

    def stuck(seed=0, **_):  # proposes the baseline, a repeat, every time
        return optuna.samplers.PartialFixedSampler({c.key: 0 for c in SPACE.choices},
                                                   optuna.samplers.RandomSampler(seed))

    monkeypatch.setattr(optuna.samplers, "TPESampler", stuck)
    result = _run(w, tmp_path, "tpe", budget=8, limit=1.0)
    assert result.measurements_used == 8
    assert len({t.plan.digest() for t in result.trials}) == 8
    study = RunStore(tmp_path / "tpe").ledger().study
    proposed = [t.user_attrs.get("proposed_by", "") for t in study.trials
                if "measurement" in t.user_attrs and t.user_attrs["strategy"] == "tpe"]
    assert len(proposed) == 8 and all(p.startswith("random") for p in proposed)


def test_the_baseline_trial_carries_parameters_so_multivariate_samplers_model_the_space(w, tmp_path):
    _run(w, tmp_path, "tpe", budget=2)
    study = RunStore(tmp_path / "tpe").ledger().study
    baseline = next(t for t in study.trials if t.user_attrs["strategy"] == "baseline")
    assert baseline.params == {c.key: 0 for c in SPACE.choices}


def test_ppo_uses_its_whole_budget_when_the_policy_stops_proposing(w, tmp_path, monkeypatch):
    from autotune.agents import PPO

    # A policy that settles at once (the learning thread ends with nothing new to propose).
    monkeypatch.setattr(PPO, "_learn", lambda self: self.bridge.requests.put(None))
    result = _run(w, tmp_path, "ppo", budget=8, limit=1.0)
    assert result.measurements_used == 8
    assert len({t.plan.digest() for t in result.trials}) == 8


def _topdown(w, tmp_path, measurer, budget, accuracy_budget=100, limit=0.01, latency=None,
             monkeypatch=None):
    from autotune.strategies import TopDown

    monkeypatch.setattr(TopDown, "_estimator", lambda self: latency)
    return tune(w, SPACE, strategy="topdown", budget=budget, accuracy_budget=accuracy_budget,
                out=tmp_path / "topdown", quiet=True, measurer=measurer,
                objective=Objective(max_accuracy_drop=limit))


def test_topdown_screens_by_accuracy_and_times_only_plans_within_the_limit(w, tmp_path, monkeypatch):
    speed = lambda plan: 10 / (1 + 0.1 * len(plan.int8_sites))  # noqa: E731 (what SiteFake times)
    result = _topdown(w, tmp_path, SiteFake(w), budget=4, latency=speed, monkeypatch=monkeypatch)
    screened = [t for t in result.trials if not t.measurement.timed]
    timed = [t for t in result.trials if t.measurement.timed]
    # all INT8, then each region reverted alone, then a binary search over the revert order
    assert screened[0].plan.int8_sites == sorted(f"int8_node:n{i}" for i in range(N_SITES))
    assert len(screened) >= 1 + N_SITES and result.accuracy_evaluations == len(screened)
    assert not any(t.exportable for t in screened) and all(t.score is None for t in screened)
    fit = [t for t in screened if 0.95 - t.measurement.accuracy <= 0.01 + 1e-9]
    assert fit and all("not timed" in t.verdict for t in fit)
    assert timed and all(0.95 - t.measurement.accuracy <= 0.01 + 1e-9 for t in timed)
    assert len(timed) <= 4
    # the most accuracy-costly regions go back to FP32: 5 of 10 stay INT8, as bottom-up finds
    assert len(result.best.plan.int8_sites) == 5
    assert result.best.measurement.speedup == pytest.approx(1.5)


SAVE = {f"int8_node:n{i}": 0.02 if i < 7 else 0.30 for i in range(N_SITES)}  # latency INT8 saves


class SavingsFake(SiteFake):
    """Like SiteFake, but INT8 on n7-n9 saves 15 times what it saves elsewhere."""

    def measure(self, plan: Plan) -> Measurement:
        m = super().measure(plan)
        speed = 1.0 + sum(SAVE[s] for s in plan.int8_sites)
        return Measurement("ok", latency_ms=10 / speed, baseline_ms=10.0, speedup=speed,
                           speedup_ci=(speed * 0.99, speed * 1.01), runs=20, peak_memory_mb=10.0,
                           model_size_mb=1.0, accuracy=m.accuracy, metric="top1", cached=m.cached)


def test_topdown_reverts_what_costs_least_latency_per_accuracy_regained(w, tmp_path, monkeypatch):
    latency = lambda plan: 10 / (1.0 + sum(SAVE[s] for s in plan.int8_sites))  # noqa: E731
    top = _topdown(w, tmp_path, SavingsFake(w), budget=6, latency=latency, monkeypatch=monkeypatch)
    greedy = tune(w, SPACE, strategy="greedy", budget=30, out=tmp_path / "greedy", quiet=True,
                  measurer=SavingsFake(w), objective=Objective(max_accuracy_drop=0.01))
    # n7-n9 cost the most accuracy but pay the most: top-down keeps two in INT8 (all three
    # cost 0.0135) and gives up cheap ones instead; bottom-up, cheapest accuracy first, fills
    # the limit with n0-n4 and never gets to them
    assert len({"int8_node:n7", "int8_node:n8", "int8_node:n9"} & set(top.best.plan.int8_sites)) == 2
    assert top.best.measurement.speedup > greedy.best.measurement.speedup
    assert top.measurements_used <= 6 < greedy.measurements_used


def test_topdown_stops_screening_when_the_accuracy_budget_is_used(w, tmp_path, monkeypatch):
    result = _topdown(w, tmp_path, SiteFake(w), budget=4, accuracy_budget=3,
                      monkeypatch=monkeypatch)
    assert result.accuracy_evaluations == 3
    assert sum(not t.measurement.timed for t in result.trials) == 3
    assert result.measurements_used <= 4


class ClashFake(SiteFake):
    """Any two INT8 sites together cost 2 points (errors that do not add up); n9 alone too,
    every other site alone 0.1 point."""

    def measure(self, plan: Plan) -> Measurement:
        m = super().measure(plan)
        chosen = plan.int8_sites
        drop = 0.02 if len(chosen) > 1 or chosen == ["int8_node:n9"] else 0.001 * len(chosen)
        return Measurement(**{**m.__dict__, "accuracy": 0.95 - drop})


def test_topdown_finds_from_the_other_end_what_reverting_misses(w, tmp_path, monkeypatch):
    # reverting all but n9 (the last in its order) is still over the limit: only a plan built
    # from the bottom, one site alone, fits
    result = _topdown(w, tmp_path, ClashFake(w), budget=4, monkeypatch=monkeypatch)
    assert result.best is not None and len(result.best.plan.int8_sites) == 1
    assert result.best.plan.int8_sites != ["int8_node:n9"]


class TrapFake(SiteFake):
    """Like SiteFake, but INT8 at n0 costs 0.6 of the speedup (a border the estimate misses)."""

    def measure(self, plan: Plan) -> Measurement:
        m = super().measure(plan)
        speed = m.speedup - 0.6 * ("int8_node:n0" in plan.int8_sites)
        return Measurement(**{**m.__dict__, "speedup": speed, "latency_ms": 10 / speed,
                              "speedup_ci": (speed * 0.99, speed * 1.01)})


def test_topdown_ranks_by_what_it_timed_not_only_by_the_estimate(w, tmp_path, monkeypatch):
    # Every plan within the limit that the estimate ranks first holds n0 (the cheapest region
    # in accuracy). Once one is timed and disappoints, plans with its regions rank lower and a
    # plan without n0 is timed next: a win within 4 timings, where the estimate's order alone
    # spends them all on plans with n0.
    speed = lambda plan: 10 / (1 + 0.1 * len(plan.int8_sites))  # noqa: E731 (SiteFake's)
    result = _topdown(w, tmp_path, TrapFake(w), budget=4, latency=speed, monkeypatch=monkeypatch)
    timed = [t.plan.int8_sites for t in result.trials if t.measurement.timed]
    assert "int8_node:n0" in timed[0] and "int8_node:n0" not in timed[1]
    assert result.best is not None and "int8_node:n0" not in result.best.plan.int8_sites
    assert result.best.measurement.speedup >= 1.1


def test_the_correction_blames_the_regions_a_timing_disappointed_on():
    from autotune.estimator import Correction

    c = Correction()
    assert c.factor({"a", "b"}) == 1.0  # nothing timed: the estimate as it is
    c.observe({"a", "b"}, measured=1.0, estimated=2.0)
    assert c.factor({"a"}) < 1.0 and c.factor({"c"}) == 1.0
    assert 0.5 < c.factor({"a", "b"}) < c.factor({"a"})  # shrunk toward the estimate
    c.observe({"a"}, measured=1.5, estimated=1.5)  # a alone is as estimated: b is to blame
    assert c.factor({"b"}) < c.factor({"a"}) <= 1.0
