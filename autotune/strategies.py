"""Strategies propose Plans; the tuner measures them and tells the strategy what happened.

`ask()` is called before each measurement and returns the next Plan, or None when the strategy
has nothing new to propose. A strategy that wants a plan's accuracy alone (built and scored on
the evaluation split, not timed: cheap next to a timing, and counted against the accuracy budget
instead) sets `accuracy_only` before returning it. `tell()` is called once per proposed Plan with its Measurement
and score (None for a failed candidate). A strategy never proposes the same Plan twice.

Every trial is recorded in the run's Optuna study (the ledger, `autotune.store`); `open_trial`
gives the Optuna trial the last proposal goes into. Optuna's samplers propose through that
study, so in a study shared by several workers they learn from every worker's trials.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from autotune import space as spaces
from autotune.errors import UsageError, did_you_mean
from autotune.estimator import Correction
from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.plan import InvalidPlan, Plan
from autotune.space import SearchSpace
from autotune.store import Ledger


class Strategy(ABC):
    name: str = ""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self.seen: set[str] = set()
        self._start = list(space.start)
        self.baseline: Measurement | None = None
        self.objective: Objective | None = None
        self.ledger: Ledger | None = None
        self._trial = None  # the Optuna trial of the last proposal, if the strategy opened it
        self.accuracy_only = False  # the last proposal is for an accuracy evaluation
        self.accuracy_budget = 0

    def ask(self) -> Plan | None:
        """The next new Plan: the space's start points first, then the strategy's own."""
        while self._start:
            plan = self.space.plan(self._start.pop(0))
            if self._fresh(plan):
                return plan
        return self._ask()

    def setup(self, baseline: Measurement, objective: Objective, ledger: Ledger,
              accuracy_budget: int = 0) -> None:
        """Called once by the tuner, after the baseline is measured and before the first ask."""
        self.baseline, self.objective, self.ledger = baseline, objective, ledger
        self.accuracy_budget = accuracy_budget

    def open_trial(self):
        """The Optuna trial the last proposal is recorded in."""
        trial, self._trial = self._trial, None
        return trial if trial is not None else self.ledger.study.ask()

    def tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        self._tell(plan, measurement, score)

    def baseline_params(self) -> tuple[dict, dict] | None:
        """The baseline's parameters and distributions in the study, for samplers that read
        them; None for strategies that do not propose through Optuna."""
        return None

    def settings(self) -> dict:
        """The strategy's own settings, written into the run's records."""
        return {"name": self.name, "seed": self.seed}

    def _fresh(self, plan: Plan) -> bool:
        digest = plan.digest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True

    @abstractmethod
    def _ask(self) -> Plan | None: ...

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        pass

    def close(self) -> None:
        """Called once when the tuner is done with the strategy."""


class RandomSearch(Strategy):
    """Uniform random assignments over the space, never the same Plan twice."""

    name = "random"
    MAX_DRAWS = 2000  # draws without a new Plan before the space counts as exhausted

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.rng = np.random.default_rng(seed)
        self.seen.add(Plan().digest())  # the baseline is always measured by the tuner itself

    def _ask(self) -> Plan | None:
        for _ in range(self.MAX_DRAWS):
            try:
                plan = self.space.plan(self.space.sample(self.rng))
            except InvalidPlan:
                continue
            if self._fresh(plan):
                return plan
        return None


class Greedy(Strategy):
    """Per-site search: lossless rewrites rule by rule, then the most INT8 within the limit.

    After the space's start points:
    1. each rule of lossless sites (fusion, layout, horizontal grouping) at all its sites at
       once, on top of the rules kept so far; a rule is kept if that is faster than the best so
       far (its accuracy needs no measuring: its rewrites are tested to keep the outputs);
    2. each lossy site alone with its first non-keep option ("singles"), which measures what it
       costs in accuracy;
    3. the lossy sites from cheapest to dearest, and a binary search for the longest prefix of
       that order that, on top of the kept rules, stays within the accuracy limit and is faster
       than the best so far;
    4. the remaining lossy sites one by one on top of that, while budget lasts.
    Assumes accuracy costs roughly add up, as INT8 errors do. The start points (whole-model INT8
    with various quantizer settings, execution providers) also choose the settings of per-site
    INT8, those of the most accurate static start point, and the execution provider every step runs
    on, that of the fastest start point within the accuracy limit.
    """

    name = "greedy"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.seen.add(Plan().digest())
        sites = [(c.key, c.options[1]) for c in space.site_choices]
        lossless = {f"site:{site.id}": site.rule for site in space.sites if not site.lossy}
        self.rules: list[list[tuple[str, str]]] = []
        for rule in dict.fromkeys(lossless.values()):
            self.rules.append([s for s in sites if lossless.get(s[0]) == rule])
        self.lossy = [s for s in sites if s[0] not in lossless]
        self.singles = list(self.lossy)
        self.base: list[tuple[str, str]] = []  # lossless sites kept
        self.cost: dict[str, float] = {}
        self.gain: dict[str, float] = {}
        self.order: list[tuple[str, str]] | None = None
        self.lo, self.hi = 0, 0  # binary search over prefix lengths: lo fits, hi+1 does not
        self.kept: list[tuple[str, str]] = []
        self.rest: list[tuple[str, str]] | None = None
        self.best_score = 1.0
        self.pending: tuple = ()
        self.starts = {self.space.plan(p).digest(): p for p in space.start}
        self.quantizer: dict | None = None  # the settings of the most accurate start point
        self.quantizer_drop = float("inf")
        self.provider: dict = {}  # the provider (and options) of the fastest start point that fits

    def _plan(self, chosen: list[tuple[str, str]]) -> Plan:
        assignment = {**self.provider, **dict(chosen)}
        if self.quantizer and "int8" in assignment.values():
            assignment.update(self.quantizer)
        return self.space.plan(assignment)

    def _ask(self) -> Plan | None:
        while self.rules:
            group = self.rules.pop(0)
            self.pending = ("rule", group)
            plan = self._plan(self.base + group)
            if self._fresh(plan):
                return plan
        while self.singles:
            key, option = self.singles.pop(0)
            self.pending = ("single", key)
            plan = self._plan([(key, option)])
            if self._fresh(plan):
                return plan
        if self.order is None:
            limit = self.objective.max_accuracy_drop if self.objective else float("inf")
            order = sorted(self.lossy, key=lambda s: (self.cost.get(s[0], float("inf")),
                                                      -self.gain.get(s[0], 0.0)))
            self.order = [s for s in order if self.cost.get(s[0], float("inf")) <= limit]
            self.lo, self.hi = 0, len(self.order)
        while self.lo < self.hi:
            mid = (self.lo + self.hi + 1) // 2
            self.pending = ("prefix", mid)
            plan = self._plan(self.base + self.order[:mid])
            if self._fresh(plan):
                return plan
            self.lo = mid  # measured before: treat as fitting
        if self.rest is None:
            self.kept = self.base + self.order[:self.lo]
            self.rest = self.order[self.lo:]
        while self.rest:
            site = self.rest.pop(0)
            self.pending = ("add", site)
            plan = self._plan(self.kept + [site])
            if self._fresh(plan):
                return plan
        return None

    def _fits(self, m: Measurement) -> tuple[bool, float]:
        if not m.ok or self.objective is None:
            return False, 0.0
        ok, _ = self.objective.verdict(m, self.baseline)
        score = self.objective.score(m, self.baseline) or 0.0
        return ok and score >= self.best_score, score

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        fits, value = self._fits(measurement)
        if fits:
            self.best_score = value
        if not self.pending:  # a start point: it raises the bar, may set the quantizer and provider
            self._tell_start(plan, measurement, fits)
            return
        kind, what = self.pending
        self.pending = ()
        if kind == "rule" and fits:
            self.base += what
        elif kind == "single":
            drop = (self.objective.accuracy_drop(measurement, self.baseline)
                    if measurement.ok and self.objective is not None else None)
            self.cost[what] = float("inf") if drop is None else max(drop, 0.0)
            self.gain[what] = value
        elif kind == "prefix":
            if fits:
                self.lo = what
            else:
                self.hi = what - 1
        elif kind == "add" and fits:
            self.kept.append(what)

    def _tell_start(self, plan: Plan, measurement: Measurement, fits: bool) -> None:
        start = self.starts.get(plan.digest())
        if start is not None and fits:
            self.provider = {k: v for k, v in start.items()
                             if k == "execution_provider" or k in spaces.PROVIDER_KEYS}
        if (start is None or plan.quantization is None or plan.quantization.mode != "static"
                or not measurement.ok or self.objective is None):
            return  # per-site INT8 is static: a dynamic start point's settings are not its own
        drop = self.objective.accuracy_drop(measurement, self.baseline)
        if drop is not None and drop < self.quantizer_drop:
            self.quantizer = {k: v for k, v in start.items() if k.startswith("quantization")}
            self.quantizer_drop = drop

    def settings(self) -> dict:
        return {**super().settings(), "lossless_rules": len(self.rules),
                "lossy_sites": len(self.lossy)}


class TopDown(Strategy):
    """Per-region precision from the top: whole-model INT8 first, then back to FP32 only where
    the accuracy is lost, in the order that costs least latency.

    After the space's start points (timed):
    1. the quantizer settings and execution provider: those of the most accurate static INT8
       start point among those faster than the baseline (the fastest if none is);
    2. every INT8 region at once, accuracy only; if that is over the limit,
    3. each region reverted to FP32 alone, accuracy only: what it gives back;
    4. the regions ordered by accuracy given back per latency lost (reverts the estimator says
       cost nothing first), and a binary search, accuracy only, for the shortest prefix of that
       order whose revert brings the plan within the limit;
    5. from the other end, for plans top-down misses (one region may cost more alone than all
       but one do): each region alone in INT8, accuracy only, and a binary search for the
       longest prefix, by latency saved per accuracy lost, within the limit;
    6. the plans found within the limit timed for real, fastest estimate first: the first
       FRONT_RUNNERS, and more while none of them wins;
    7. while budget lasts, regions the best timed plan left in FP32 are put in INT8 one at a
       time, dearest first, each screened by accuracy and timed if it stays within the limit.
    Accuracy evaluations count against the accuracy budget, timings against the budget.
    Latency estimates come from `autotune.estimator` (the CPU provider's profile), corrected
    after every timing by what it measured (`estimator.Correction`); without a profile, a plan
    with more INT8 regions counts as faster.
    """

    name = "topdown"
    FRONT_RUNNERS = 3  # plans within the limit timed before the local search

    def __init__(self, space: SearchSpace, seed: int = 0, workload=None) -> None:
        super().__init__(space, seed)
        self.workload = workload
        self.seen.add(Plan().digest())
        self.regions = [c.key for c in space.site_choices if "int8" in c.options]
        self.starts = {self.space.plan(p).digest(): p for p in space.start}
        self.results: dict[tuple[str, bool], Measurement] = {}  # (digest, timed) -> what came back
        self.setting: dict = {}  # quantizer and provider choices every plan here carries
        self._steps = None
        self._estimate = None
        self._learnt = Correction()

    def setup(self, baseline: Measurement, objective: Objective, ledger: Ledger,
              accuracy_budget: int = 0) -> None:
        super().setup(baseline, objective, ledger, accuracy_budget)
        self._estimate = self._estimator()

    def _estimator(self):
        """Estimated latency (ms) of a plan, or None: the cost model is a help, not a need."""
        if self.workload is None or not self.regions:
            return None
        from autotune.estimator import Estimator, profile

        try:
            return Estimator(profile(self.workload), self.space.sites).latency_ms
        except Exception:  # a model the profiler cannot attribute: order by accuracy alone
            return None

    def _plan(self, int8: list[str]) -> Plan:
        return self.space.plan({**self.setting, **{key: "int8" for key in int8}})

    def _latency(self, int8: list[str]) -> float:
        """Estimated latency of a plan, corrected by what was timed; without an estimator,
        more INT8 regions count as faster."""
        if self._estimate is None:
            return -len(int8)
        return self._estimate(self._plan(int8)) / self._learnt.factor(int8)

    def _observe(self, int8: list[str], m: Measurement | None) -> None:
        if self._estimate is not None and m is not None and m.ok and m.timed and m.speedup:
            estimated = self._estimate(self._plan([])) / self._estimate(self._plan(int8))
            self._learnt.observe(int8, m.speedup, estimated)

    def _drop(self, m: Measurement | None) -> float | None:
        return self.objective.accuracy_drop(m, self.baseline) if m is not None and m.ok else None

    def _fits(self, m: Measurement | None) -> bool:
        drop = self._drop(m)
        return drop is not None and self.objective.within_limit(drop)

    def _ask(self) -> Plan | None:
        if self._steps is None:
            self._steps = self._search()
        return next(self._steps, None)

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        self.results[(plan.digest(), measurement.timed)] = measurement

    def _accuracy(self, int8: list[str]):
        """Yields the plan for an accuracy evaluation unless its accuracy is known; gives the
        Measurement (None when the accuracy budget is used)."""
        plan = self._plan(int8)
        d = plan.digest()
        known = self.results.get((d, True)) or self.results.get((d, False))
        if known is None and plan != Plan():
            if self.ledger is not None and self.ledger.spent(timed=False) >= self.accuracy_budget:
                return None
            self.accuracy_only = True
            yield plan
            self.accuracy_only = False
            # a timing of the plan (by another worker, or cached) answers for its accuracy too
            known = self.results.get((d, False)) or self.results.get((d, True))
        return known

    def _timing(self, int8: list[str]):
        """Yields the plan for a timing unless it was timed; gives its score (None: not
        exportable: over the limit, no faster, or failed)."""
        plan = self._plan(int8)
        if self._fresh(plan):
            self.accuracy_only = False
            yield plan
        m = self.results.get((plan.digest(), True))
        self._observe(int8, m)
        if m is None or not self.objective.verdict(m, self.baseline)[0]:
            return None
        return self.objective.score(m, self.baseline)

    def _choose_setting(self) -> None:
        """Quantizer settings and provider from the static INT8 start points."""
        measured = []
        for digest, point in self.starts.items():
            m = self.results.get((digest, True))
            plan = self.space.plan(point)
            if m is not None and m.ok and plan.quantization and plan.quantization.mode == "static":
                measured.append((point, m))
        if not measured:
            return
        floor = 1.0 + self.objective.min_gain
        fast = [(p, m) for p, m in measured if (m.speedup or 0) >= floor]
        if fast:
            point, m = min(fast, key=lambda pm: (self._drop(pm[1]) if self._drop(pm[1]) is not None
                                                 else float("inf"), -pm[1].speedup))
        else:
            point, m = max(measured, key=lambda pm: pm[1].speedup or 0)
        self.setting = {k: v for k, v in point.items()
                        if k.startswith("quantization") or k == "execution_provider"
                        or k in spaces.PROVIDER_KEYS}
        self._observe(self.regions, m)  # whole-model INT8 is every region in INT8

    def _search(self):
        self._choose_setting()
        everything = list(self.regions)
        if not everything:
            return
        within = yield from self._top_down(everything)
        if within is None:  # every region in INT8 does not build: nothing to go down from
            return
        within += yield from self._bottom_up(everything)
        # the front-runners, fastest (corrected) estimate first; more while none of them wins
        pending = {self._plan(w).digest(): w for w in within}
        best, best_score, timed = None, 1.0, 0
        while pending and (timed < self.FRONT_RUNNERS or best is None):
            digest = min(pending, key=lambda d: self._latency(pending[d]))
            int8 = pending.pop(digest)
            score = yield from self._timing(int8)
            timed += 1
            if score is not None and score > best_score:
                best, best_score = int8, score
        if best is None:
            return
        # local search: regions the best left in FP32 put in INT8, dearest first
        tried: set[str] = set()
        while rest := [k for k in everything if k not in best and k not in tried]:
            key = min(rest, key=lambda k: self._latency(best + [k]))
            tried.add(key)
            trial = best + [key]
            m = yield from self._accuracy(trial)
            if not self._fits(m):
                continue
            score = yield from self._timing(trial)
            if score is not None and score > best_score:
                best, best_score = trial, score

    def _top_down(self, everything: list[str]):
        """Region lists within the limit found by reverting regions from all-INT8 (None when
        all-INT8 does not build)."""
        all_int8 = yield from self._accuracy(everything)
        if all_int8 is None or not all_int8.ok:
            return None
        if self._fits(all_int8):
            return [everything]
        within = []
        base_drop = self._drop(all_int8)
        gain, cost = {}, {}
        full_ms = self._latency(everything)
        for key in everything:
            rest = [k for k in everything if k != key]
            m = yield from self._accuracy(rest)
            drop = self._drop(m)
            gain[key] = base_drop - drop if drop is not None else 0.0
            cost[key] = self._latency(rest) - full_ms
            if self._fits(m):
                within.append(rest)
        order = sorted(everything, key=lambda k: (0, cost[k], -gain[k]) if cost[k] <= 0
                       else (1, -gain[k] / cost[k], 0.0))
        lo, hi = 0, len(order)  # how many of `order` to revert: hi fits (all FP32 does)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            kept = [k for k in everything if k not in order[:mid]]
            m = yield from self._accuracy(kept)
            if m is None:
                break
            if self._fits(m):
                hi = mid
                within.append(kept)
            else:
                lo = mid
        if hi < len(order):
            within.append([k for k in everything if k not in order[:hi]])
        return within

    def _bottom_up(self, everything: list[str]):
        """Region lists within the limit found from the other end: each region alone (accuracy
        only), then the longest prefix, by latency saved per accuracy lost, within the limit.
        Where one region alone already costs more than all-INT8 minus one, the top-down search
        stops at plans over the limit that this finds."""
        none_ms = self._latency([])
        cost, saved = {}, {}
        for key in everything:
            m = yield from self._accuracy([key])
            if self._fits(m):  # alone over the limit: in no plan within it, if costs add
                cost[key], saved[key] = max(self._drop(m), 0.0), none_ms - self._latency([key])
        order = sorted(cost, key=lambda k: (-saved[k] / max(cost[k], 1e-9), cost[k]))
        within = [[key] for key in order]
        lo, hi = min(1, len(order)), len(order)  # prefix lengths: lo fits, above hi does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            m = yield from self._accuracy(order[:mid])
            if m is None:
                break
            if self._fits(m):
                lo = mid
                within.append(order[:mid])
            else:
                hi = mid - 1
        return within

    def settings(self) -> dict:
        return {**super().settings(), "int8_regions": len(self.regions),
                "front_runners": self.FRONT_RUNNERS}


class OptunaStrategy(Strategy):
    """An Optuna sampler over the same choices, through Optuna's ask-and-tell interface, on the
    run's study.

    Each choice is suggested as the index of its option: categorical for the samplers that
    model categories (TPE, GP, NSGA-II), an integer for those that only sample numbers (CMA-ES
    with margin, Sobol QMC), which then treat the options as ordered. The study is told
    `Objective.study_value`. The space's start points are enqueued in the study, so the sampler
    learns from them. A plan measured before (two assignments can give one plan) is told its
    earlier value without counting against the budget. Subclasses name the sampler and the
    options it is built with, which go into the run's records.
    """

    MAX_ASKS = 200  # asks without a new Plan before the space counts as exhausted
    MAX_REPEATS = 20  # sampler proposals without a new Plan before random ones take over
    sampler_class = ""  # the class in optuna.samplers
    numeric = False  # suggest option indices as integers rather than categories

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        import warnings

        import optuna

        super().__init__(space, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Few random start-up trials: the budgets here are tens of measurements.
        self.startup = max(3, min(10, len(space.choices)))
        with warnings.catch_warnings():  # QMC and CMA-ES with margin are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.sampler = getattr(optuna.samplers, self.sampler_class)(seed=seed, **self.options())
        self.study = None  # the run's study with this sampler, from setup
        self._random = None  # the same study with a RandomSampler, when the sampler repeats
        self.values: dict[str, float | tuple[float, ...]] = {}
        self.seen.add(Plan().digest())

    def setup(self, baseline: Measurement, objective: Objective, ledger: Ledger,
              accuracy_budget: int = 0) -> None:
        super().setup(baseline, objective, ledger, accuracy_budget)
        self.study = ledger.load(self.sampler)
        self.values[Plan().digest()] = objective.baseline_value
        # Start points as enqueued trials (once per study, by the first worker): the sampler
        # then sees them as its own.
        first = all(t.user_attrs.get("strategy") == "baseline"
                    for t in self.study.get_trials(deepcopy=False))
        by_key = {c.key: c for c in self.space.choices}
        for point in self._start:  # a point outside the space's choices cannot be enqueued
            if first and all(k in by_key and v in by_key[k].options for k, v in point.items()):
                self.study.enqueue_trial({c.key: c.options.index(point.get(c.key, c.options[0]))
                                          for c in self.space.choices}, skip_if_exists=True)
        self._start = []

    def options(self) -> dict:
        """The sampler's options other than the seed, chosen for budgets of tens of trials."""
        return {}

    def _distribution(self, choice):
        import optuna

        if self.numeric:
            return optuna.distributions.IntDistribution(0, len(choice.options) - 1)
        return optuna.distributions.CategoricalDistribution(list(range(len(choice.options))))

    def _suggest(self, trial, choice) -> int:
        if self.numeric:
            return trial.suggest_int(choice.key, 0, len(choice.options) - 1)
        return trial.suggest_categorical(choice.key, list(range(len(choice.options))))

    def baseline_params(self) -> tuple[dict, dict] | None:
        # The baseline as an assignment, the first option of every choice when that is Plan():
        # a baseline trial without parameters would empty the space that multivariate samplers
        # model jointly (Optuna intersects the parameters of finished trials).
        assignment = {c.key: c.options[0] for c in self.space.choices}
        try:
            if self.space.plan(assignment).digest() != Plan().digest():
                return None
        except InvalidPlan:
            return None
        return ({c.key: 0 for c in self.space.choices},
                {c.key: self._distribution(c) for c in self.space.choices})

    def _ask(self) -> Plan | None:
        import optuna

        for asked in range(self.MAX_ASKS):
            random = asked >= self.MAX_REPEATS
            if random and self._random is None:
                # Some samplers repeat one proposal while their model does not change (TPE
                # sampling independently ignores failed trials): go on with random proposals,
                # recorded in the same study, so the sampler learns from them.
                self._random = self.ledger.load(optuna.samplers.RandomSampler(seed=self.seed))
            trial = (self._random if random else self.study).ask()
            if random:
                trial.set_user_attr("proposed_by", "random (the sampler kept repeating itself)")
            assignment = {c.key: c.options[self._suggest(trial, c)] for c in self.space.choices}
            try:
                plan = self.space.plan(assignment)
            except InvalidPlan as exc:
                self.ledger.skip(trial, f"not a valid plan: {exc}")
                continue
            if plan.digest() in self.values:
                self.ledger.skip(trial, "repeats a plan measured before",
                                 self.values[plan.digest()])
                continue
            if not self._fresh(plan):  # proposed before, its result not back yet
                self.ledger.skip(trial, "repeats a plan being measured")
                continue
            self._trial = trial
            return plan
        return None

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        if measurement.ok or not measurement.transient:
            value = self.objective.study_value(measurement, self.baseline)
            if value is not None:
                self.values[plan.digest()] = value

    def settings(self) -> dict:
        import optuna

        return {**super().settings(), "sampler": self.sampler_class, **self.options(),
                "suggest": "integer index" if self.numeric else "categorical",
                "optuna": optuna.__version__}


class TPE(OptunaStrategy):
    name, sampler_class = "tpe", "TPESampler"

    def options(self) -> dict:
        # constant_liar: with several workers, trials still running count as bad guesses, so
        # that the workers spread out instead of proposing alike.
        return {"n_startup_trials": self.startup, "multivariate": True, "constant_liar": True}


class CmaEs(OptunaStrategy):
    name, sampler_class = "cmaes", "CmaEsSampler"
    numeric = True  # CMA-ES samples numbers; with_margin keeps integer choices from sticking

    def options(self) -> dict:
        return {"n_startup_trials": self.startup, "with_margin": True,
                "warn_independent_sampling": False}


class GP(OptunaStrategy):
    name, sampler_class = "gp", "GPSampler"

    def options(self) -> dict:
        return {"n_startup_trials": self.startup}


class QMC(OptunaStrategy):
    name, sampler_class = "qmc", "QMCSampler"
    numeric = True  # scrambled Sobol points cover the grid of option indices evenly

    def options(self) -> dict:
        return {"qmc_type": "sobol", "scramble": True, "warn_independent_sampling": False}


class NSGA2(OptunaStrategy):
    name, sampler_class = "nsga2", "NSGAIISampler"

    def options(self) -> dict:
        # Small generations, so that tens of trials see several of them.
        return {"population_size": max(4, min(16, len(self.space.choices)))}


class Presets(Strategy):
    """What a user gets without tuning, one after another: every ONNX Runtime optimization
    level other than the baseline's, whole-model dynamic INT8, whole-model static INT8 QDQ
    (per-channel MinMax, the quantizer's defaults), and on each other execution provider this
    machine has, the provider with its defaults, alone and with that static INT8. Needs no
    search space of its own."""

    name = "presets"
    PLANS = ({"graph_optimization_level": "disable"}, {"graph_optimization_level": "basic"},
             {"graph_optimization_level": "extended"}, {"graph_optimization_level": "layout"},
             {"quantization": "dynamic"}, {"quantization": "static"})
    PER_PROVIDER = ({}, {"quantization": "static"})

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        from autotune import providers

        super().__init__(space, seed)
        self._start = []  # the presets are the whole strategy, whatever the space
        others = [p for p, a in providers.available().items() if a.ok and p != "cpu"]
        plans = list(self.PLANS) + [{"execution_provider": p, **extra}
                                    for p in others for extra in self.PER_PROVIDER]
        self.plans = [_PRESET_SPACE.plan(p) for p in plans]
        self.seen.add(Plan().digest())

    def _ask(self) -> Plan | None:
        while self.plans:
            plan = self.plans.pop(0)
            if self._fresh(plan):
                return plan
        return None

_PRESET_SPACE = SearchSpace("presets", "", ())


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (
    RandomSearch, TPE, CmaEs, GP, QMC, NSGA2, Greedy, TopDown, Presets)}


NAMES = (*STRATEGIES, "ppo")  # ppo: autotune.agents, which needs sb3-contrib


def make(name: str, space: SearchSpace, seed: int = 0, workload=None,
         policy=None) -> Strategy:
    """The strategy `name`; `workload` and `policy` (a trained policy.zip) are for ppo."""
    if name not in NAMES:
        raise UsageError(f"no strategy `{name}`.{did_you_mean(name, NAMES)} "
                         f"Known: {', '.join(NAMES)}")
    if name == "ppo":
        from autotune.agents import PPO

        if policy is not None and not Path(policy).is_file():
            raise UsageError(f"--policy {policy}: no such file; give the policy.zip that "
                             f"`autotune agent train` wrote")
        return PPO(space, seed, workload=workload, policy=policy)
    if policy is not None:
        raise UsageError("--policy goes with --strategy ppo")
    if name == "topdown":
        return TopDown(space, seed, workload=workload)
    return STRATEGIES[name](space, seed)
