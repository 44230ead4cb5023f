"""Strategies propose Plans; the tuner measures them and tells the strategy what happened.

`ask()` is called before each measurement and returns the next Plan, or None when the strategy
has nothing new to propose. `tell()` is called once per proposed Plan with its Measurement
and score (None for a failed candidate). A strategy never proposes the same Plan twice.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from autotune.errors import UsageError, did_you_mean
from autotune.measure import Measurement
from autotune.plan import InvalidPlan, Plan
from autotune.space import SearchSpace


class Strategy(ABC):
    name: str = ""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self.seen: set[str] = set()
        self._start = list(space.start)

    def ask(self) -> Plan | None:
        """The next new Plan: the space's start points first, then the strategy's own."""
        while self._start:
            plan = self.space.plan(self._start.pop(0))
            if self._fresh(plan):
                return plan
        return self._ask()

    def tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        self._tell(plan, measurement, score)

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


STRATEGIES: dict[str, type[Strategy]] = {"random": RandomSearch}


def make(name: str, space: SearchSpace, seed: int = 0) -> Strategy:
    if name not in STRATEGIES:
        raise UsageError(f"no strategy `{name}`.{did_you_mean(name, STRATEGIES)} "
                         f"Known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, seed)
