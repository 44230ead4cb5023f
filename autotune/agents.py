"""RL agents as strategies: sb3-contrib's MaskablePPO learning on `OnnxTuneEnv` while the tuner
measures.

The tuner asks a strategy for one Plan at a time and tells it the Measurement; PPO wants to
call `env.step` itself. The two meet in `_Bridge`, the environment's measurer: PPO learns in a
thread of its own, and when an episode ends on a Plan not measured before, the bridge hands the
Plan to the tuner (`ask`) and waits for its Measurement (`tell`). A Plan measured before is
answered from memory, free, as the measurement cache would: only new Plans use the budget.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune.measure import Measurement
from autotune.objective import Objective
from autotune.plan import Plan
from autotune.space import SearchSpace
from autotune.strategies import Strategy
from autotune.store import Ledger


class _Stop(Exception):
    """Ends the learning thread (the tuner is done, or the policy only repeats itself)."""


class _Bridge:
    """The environment's measurer: known Plans from memory, new ones through the tuner."""

    MAX_REPEATS = 300  # episodes in a row without a new Plan: the policy has settled

    def __init__(self) -> None:
        self.known: dict[str, Measurement] = {}
        self.requests: queue.Queue = queue.Queue(maxsize=1)
        self.answers: queue.Queue = queue.Queue(maxsize=1)
        self.repeats = 0

    def measure(self, plan: Plan) -> Measurement:
        known = self.known.get(plan.digest())
        if known is not None:
            self.repeats += 1
            if self.repeats > self.MAX_REPEATS:
                raise _Stop("the policy proposes only plans measured before")
            return replace(known, cached=True)
        self.repeats = 0
        self.requests.put(plan)
        answer = self.answers.get()
        if answer is None:
            raise _Stop("the tuner is done")
        self.known[plan.digest()] = answer
        return answer


class PPO(Strategy):
    """MaskablePPO over the space's choices, one episode per Plan, learning from each
    measurement as it comes (reward: log speedup within the accuracy limit). With a policy
    trained before (`policy`), its own Plan for this model comes first, then it refines."""

    name = "ppo"

    def __init__(self, space: SearchSpace, seed: int = 0, workload: Any = None,
                 policy: Path | None = None) -> None:
        super().__init__(space, seed)
        self.workload, self.policy = workload, policy
        episode = len(space.choices)
        # Few measurements, short episodes: update after every few episodes, give every step
        # the end-of-episode reward (gamma 1), and keep exploring (entropy bonus).
        self.hyper = {"n_steps": max(32, 4 * episode), "batch_size": 32, "n_epochs": 10,
                      "gamma": 1.0, "gae_lambda": 0.95, "ent_coef": 0.01, "learning_rate": 3e-4}
        self.bridge = _Bridge()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.seen.add(Plan().digest())

    def setup(self, baseline: Measurement, objective: Objective, ledger: Ledger) -> None:
        super().setup(baseline, objective, ledger)
        if self.workload is None:
            raise ValueError("the ppo strategy needs the workload (strategies.make(..., workload=))")
        from autotune.env import OnnxTuneEnv

        self.bridge.known[Plan().digest()] = baseline
        self.env = OnnxTuneEnv(self.workload, self.space, reward="log_speedup",
                               max_accuracy_drop=objective.max_accuracy_drop,
                               measurer=self.bridge)
        self.model = self._model()

    def _model(self):
        from sb3_contrib import MaskablePPO

        if self.policy is not None:
            return MaskablePPO.load(str(self.policy), env=self.env, seed=self.seed,
                                    custom_objects={"n_steps": self.hyper["n_steps"]})
        return MaskablePPO("MlpPolicy", self.env, seed=self.seed, verbose=0, **self.hyper)

    def _learn(self) -> None:
        try:
            if self.policy is not None:  # the trained policy's own plan for this model first
                obs, _ = self.env.reset(seed=self.seed)
                done = False
                while not done:
                    action, _ = self.model.predict(obs, action_masks=self.env.action_masks(),
                                                   deterministic=True)
                    obs, _, done, _, _ = self.env.step(action)
            self.model.learn(total_timesteps=10**9)
        except _Stop:
            pass
        except BaseException as exc:  # reported by ask, in the tuner's thread
            self.error = exc
        finally:
            try:  # wakes an ask waiting for a plan; after close nobody waits, and a plan may
                self.bridge.requests.put_nowait(None)  # still sit there unasked
            except queue.Full:
                pass

    def _ask(self) -> Plan | None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._learn, daemon=True, name="ppo")
            self.thread.start()
        plan = self.bridge.requests.get()
        if plan is None:
            if self.error is not None:
                raise self.error
            return None
        self.seen.add(plan.digest())
        return plan

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        self.bridge.answers.put(measurement)

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            try:
                self.bridge.answers.put_nowait(None)
            except queue.Full:
                pass
            self.thread.join(timeout=30)

    def settings(self) -> dict:
        return {**super().settings(), "algorithm": "MaskablePPO (sb3-contrib)",
                "policy": str(self.policy) if self.policy else None, **self.hyper}
