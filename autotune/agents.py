"""RL agents as strategies: sb3-contrib's MaskablePPO learning on `OnnxTuneEnv` while the tuner
measures.

The tuner asks a strategy for one Plan at a time and tells it the Measurement; PPO wants to
call `env.step` itself. The two meet in `_Bridge`, the environment's measurer: PPO learns in a
thread of its own, and when an episode ends on a Plan not measured before, the bridge hands the
Plan to the tuner (`ask`) and waits for its Measurement (`tell`). A Plan measured before is
answered from memory, free, as the measurement cache would: only new Plans use the budget.

`train` (`autotune agent train`) learns one policy over several models at once, on estimated
measurements (`Surrogate`), for `tune --strategy ppo --policy` to start from.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune.errors import ModelError
from autotune.measure import Measurement, Measurer, Protocol
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
        from autotune.env import check_space

        check_space(space)  # before anything is measured or written
        super().__init__(space, seed)
        self.workload, self.policy = workload, policy
        episode = len(space.choices)
        # Few measurements, short episodes: update after every few episodes, give every step
        # the end-of-episode reward (gamma 1), and keep exploring (entropy bonus).
        self.hyper = {"n_steps": max(32, 4 * episode), "batch_size": 32, "n_epochs": 10,
                      "gamma": 1.0, "gae_lambda": 0.95, "ent_coef": 0.01, "learning_rate": 3e-4}
        self.bridge = _Bridge()
        self.thread: threading.Thread | None = None
        self.pending: str | None = None  # the plan the learning thread waits to hear about
        self.random = None  # proposes once the policy only repeats plans measured before
        self.error: BaseException | None = None
        self.seen.add(Plan().digest())

    def setup(self, baseline: Measurement, objective: Objective, ledger: Ledger,
              accuracy_budget: int = 0) -> None:
        super().setup(baseline, objective, ledger, accuracy_budget)
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
        if self.random is not None:  # the policy settled: random plans use the budget left
            return self.random.ask()
        plan = self.bridge.requests.get()
        if plan is None:
            if self.error is not None:
                raise self.error
            from autotune.strategies import RandomSearch

            self.random = RandomSearch(self.space, self.seed)
            self.random.seen |= self.seen | set(self.bridge.known)
            return self.random.ask()
        self.seen.add(plan.digest())
        self.pending = plan.digest()
        return plan

    def _tell(self, plan: Plan, measurement: Measurement, score: float | None) -> None:
        if plan.digest() == self.pending:  # the plan the learning thread waits for
            self.pending = None
            self.bridge.answers.put(measurement)
        elif measurement.ok or not measurement.transient:  # a start point: known, for free
            self.bridge.known[plan.digest()] = measurement

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


# -- training one policy over several models, on estimates ---------------------------------


class Surrogate:
    """The measurer `autotune agent train` learns on: latency from the cost-model estimator
    (`autotune.estimator`), accuracy from each lossy site's error measured once alone and
    assumed to add up.

    Quantizer settings (per-channel, calibration method, activation type) change INT8's error
    far more than its speed: whole-model INT8 is measured once under every combination the
    space offers, and per-site errors, measured at the quantizer's defaults, are scaled by how
    much more or less error whole-model INT8 has under the plan's settings than under the
    defaults. The errors are measured with a short timing protocol (only accuracy is used),
    through the measurement cache. Left out: runtime settings and structural rewrites
    (estimated as the baseline) and dynamic INT8 (not faster in the estimate). A policy
    trained on it is refined by real measurements (`tune --strategy ppo --policy`)."""

    QUICK = Protocol(warmup_runs=1, min_runs=3, max_runs=3, min_seconds=0.0, max_seconds=2.0)
    SETTINGS = ("per_channel", "calibration", "activation_type")

    def __init__(self, workload: Any, space: SearchSpace, cache: Any = None,
                 say=lambda text: None) -> None:
        from autotune.estimator import Estimator, profile

        say(f"{workload.name}: profiling FP32 and INT8 kernels (ORT's profiler)")
        self.estimator = Estimator(profile(workload), space.sites)
        quick = Measurer(workload, self.QUICK, cache)
        self.baseline = quick.measure(Plan())
        if not self.baseline.ok:
            raise ModelError(f"{workload.name}: the model does not run as given "
                             f"({self.baseline.reason})")
        lossy = [(s.id, o) for s in space.sites if s.lossy for o in s.options[1:]]
        settings = self.settings_of(space)
        say(f"{workload.name}: the accuracy cost of {len(lossy)} site option(s) alone, and of "
            f"whole-model INT8 under {len(settings)} quantizer setting(s)")
        self.errors = {(sid, o): self._drop(quick.measure(Plan(sites={sid: o})))
                       for sid, o in lossy}
        self.whole = {self._key(q): self._drop(quick.measure(Plan(quantization=q)))
                      for q in settings}

    @classmethod
    def settings_of(cls, space: SearchSpace) -> list:
        """Static INT8 under every combination of the settings the space chooses from, the
        quantizer's defaults first."""
        import itertools

        from autotune.plan import InvalidPlan, Quantization

        default = Quantization(mode="static")
        offered = {c.key.split(".", 1)[1]: c.options for c in space.choices
                   if c.key.startswith("quantization.") and c.key.split(".", 1)[1] in cls.SETTINGS}
        combos = [default]
        for values in itertools.product(*offered.values()):
            try:
                q = Quantization(mode="static", **dict(zip(offered, values)))
            except InvalidPlan:
                continue
            if q not in combos:
                combos.append(q)
        return combos

    @classmethod
    def _key(cls, q) -> tuple:
        from autotune.plan import Quantization

        q = q if q is not None and q.mode == "static" else Quantization(mode="static")
        return tuple(getattr(q, name) for name in cls.SETTINGS)

    def _drop(self, m: Measurement) -> float:
        drop = Objective.accuracy_drop(m, self.baseline) if m.ok else None
        return 1.0 if drop is None else max(0.0, drop)  # a site that fails is to be avoided

    def accuracy_drop(self, plan: Plan) -> float:
        default = self.whole[self._key(None)]
        whole = self.whole.get(self._key(plan.quantization), default)
        if plan.quantization is not None and not plan.sites:
            return whole
        scale = whole / default if default > 0 else 1.0
        return scale * sum(self.errors.get(site, 0.0) for site in plan.sites)

    def measure(self, plan: Plan) -> Measurement:
        base = self.baseline
        drop = self.accuracy_drop(plan)
        speedup = self.estimator.speedup(plan)
        base_ms = self.estimator.baseline_us / 1000
        fidelity = base.metric == "fidelity"
        return Measurement("ok", latency_ms=base_ms / speedup, baseline_ms=base_ms,
                           speedup=speedup, speedup_ci=(speedup, speedup),
                           peak_memory_mb=base.peak_memory_mb, model_size_mb=base.model_size_mb,
                           accuracy=None if fidelity else (base.accuracy or 0.0) - (
                               drop if base.higher_is_better else -drop),
                           output_error=drop if fidelity else None, metric=base.metric,
                           higher_is_better=base.higher_is_better,
                           build_note="estimated (cost model and per-site errors)")


# Many cheap episodes: longer rollouts and larger batches than PPO on real measurements.
TRAIN_HYPER = {"n_steps": 256, "batch_size": 128, "n_epochs": 10, "gamma": 1.0,
               "gae_lambda": 0.95, "ent_coef": 0.01, "learning_rate": 3e-4}
# The accuracy penalty's weight while training (objective.Lagrangian): from START, rising
# linearly to END by RAMP of the steps, then held.
PENALTY = {"start": 0.02, "end": 0.5, "ramp": 0.6}


def penalty_weight(step: int, steps: int) -> float:
    """The accuracy penalty's weight after `step` of `steps` training steps (PENALTY)."""
    rise = min(1.0, step / max(PENALTY["ramp"] * steps, 1.0))
    return PENALTY["start"] + (PENALTY["end"] - PENALTY["start"]) * rise


def train(workloads: list, space: SearchSpace, out: Path, steps: int = 30_000, seed: int = 0,
          max_accuracy_drop: float = 0.01, tensorboard: Path | None = None, cache: Any = None,
          quiet: bool = False) -> list[dict[str, Any]]:
    """Trains one MaskablePPO policy over `workloads` (one environment each, stepped together)
    on `Surrogate` measurements and saves it to `out`. The reward is log speedup less a penalty
    for accuracy over the limit whose weight rises while training (`PENALTY`). Returns, per
    workload, the trained policy's own plan with its estimated speedup and accuracy drop."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from autotune.env import OnnxTuneEnv
    from autotune.objective import Lagrangian, LogSpeedup
    from autotune.progress import Progress
    from autotune.tune import sites_of

    progress = Progress(steps, quiet=quiet)
    envs = []
    with progress:
        for w in workloads:
            bound = space.bind(sites_of(w)) if space.needs_sites else space
            surrogate = Surrogate(w, bound, cache, say=progress.say)
            reward = Lagrangian(LogSpeedup(max_accuracy_drop), penalty_weight(0, steps))
            envs.append(OnnxTuneEnv(w, bound, reward=reward, max_accuracy_drop=max_accuracy_drop,
                                    measurer=surrogate))

        class Report(BaseCallback):
            def _on_step(self) -> bool:
                progress.done(self.num_timesteps)
                for env in envs:
                    env.reward.weight = penalty_weight(self.num_timesteps, steps)
                return True

        progress.status(f"training on {len(envs)} model(s)")
        vec = DummyVecEnv([lambda e=e: e for e in envs])
        model = MaskablePPO("MlpPolicy", vec, seed=seed, verbose=0, **TRAIN_HYPER,
                            tensorboard_log=str(tensorboard) if tensorboard else None)
        model.learn(total_timesteps=steps, callback=Report(),
                    tb_log_name="agent-train" if tensorboard else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return [_own_plan(model, env) for env in envs]


def _own_plan(model: Any, env: Any) -> dict[str, Any]:
    """The policy's deterministic plan for `env`'s model, and what the surrogate says of it."""
    obs, _ = env.reset()
    done, info = False, {}
    while not done:
        action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
        obs, _, done, _, info = env.step(action)
    m = Measurement.from_dict(info["measurement"])
    return {"workload": env.workload.name, "plan": info["plan_summary"],
            "estimated_speedup": m.speedup,
            "estimated_accuracy_drop": Objective.accuracy_drop(m, env.measurer.baseline)}
