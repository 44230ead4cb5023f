"""The Gymnasium environment `autotune/OnnxTune-v1`: one episode builds one Plan.

    env = gymnasium.make("autotune/OnnxTune-v1", workload="zoo:resnet18",
                         search_space="cpu-int8", reward="log_speedup")

An episode walks the search space's choices in a fixed order: its global choices (ORT level,
optimizer toggles, threads, memory settings, whole-model INT8 and its settings) as the YAML
lists them, then every site of the model in catalogue order. Each step picks one option for
one choice: `Discrete(MAX_OPTIONS)`, with `action_masks()` allowing only the options that
apply (the choice's own, and none that conflicts with a site chosen before it). An action
outside the mask is taken as the choice's first option (keep) and flagged in `info`. The last
step measures the complete Plan through the shared measurement cache (a Plan measured before
costs nothing) and is paid `reward.update(measurement)`; the other steps are paid 0. A failed
candidate is a penalized reward with its reason in `info`, never an exception.

Observations are a fixed-size Box (`OBSERVATION`, each index named and described) with the
same meaning for every model and space, so that one policy can be trained on several models.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from autotune import register_envs
from autotune.errors import UsageError
from autotune.measure import Measurement, Measurer
from autotune.objective import Reward, make_reward
from autotune.plan import InvalidPlan, Plan
from autotune.sites import KINDS, RULES, Site
from autotune.providers import NAMES as PROVIDER_NAMES
from autotune.space import KEYS, SearchSpace, applies

MAX_OPTIONS = 8  # the action space: no choice has more options
GLOBAL_KEYS = tuple(sorted(KEYS))
CHOICE_KINDS = GLOBAL_KEYS + tuple(f"site:{rule}" for rule in RULES)
OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Sigmoid", "Clip",
            "BatchNormalization", "LayerNormalization", "Softmax", "Transpose", "Reshape")


def _observation_layout() -> list[tuple[str, str]]:
    rows = [(f"choice={k}", "1 if the current step decides this choice (a global key, or a "
             "site of this rule)") for k in CHOICE_KINDS]
    rows += [(f"site_op={op}", "1 if the current site's nodes include this operator") for op in OP_TYPES]
    rows += [("site_op=other", "1 if they include an operator not listed above"),
             ("site_flops", "log1p(FLOPs of the site's nodes) / 25"),
             ("site_bytes", "log1p(bytes its nodes read and write) / 25"),
             ("site_nodes", "log1p(number of nodes) / 5"),
             ("site_position", "where the site starts in the graph, 0 (inputs) to 1 (outputs)"),
             ("site_lossy", "1 if the site's options can change the outputs"),
             ("options", "number of options of the current choice / MAX_OPTIONS"),
             ("model_nodes", "log1p(nodes in the model) / 10"),
             ("model_flops", "log1p(FLOPs of the model's Conv / MatMul / Gemm nodes) / 30"),
             ("model_conv", "fraction of the model's nodes that are Conv"),
             ("model_matmul", "fraction that are MatMul or Gemm")]
    rows += [(f"model_sites={k}", f"log1p(number of {k} sites in the space) / 5") for k in KINDS]
    rows += [(f"chosen={k}", f"fraction of the space's {k} sites decided so far with an option "
              f"other than keep") for k in KINDS]
    rows += [("chosen_int8_flops", "fraction of the model's FLOPs set to INT8 by sites so far"),
             ("chosen_quantization=static", "1 if whole-model static INT8 was chosen"),
             ("chosen_quantization=dynamic", "1 if whole-model dynamic INT8 was chosen"),
             ("chosen_level", "ORT optimization level chosen, 0 (all) to 1 (disable); 0 if not yet"),
             *[(f"chosen_provider={p}", f"1 if the {p} execution provider was chosen")
               for p in PROVIDER_NAMES if p != "cpu"],
             ("progress", "steps taken / steps in the episode")]
    return rows


OBSERVATION = _observation_layout()


def check_space(space: SearchSpace) -> None:
    """UsageError if a choice of `space` has more options than the environment has actions."""
    too_many = [c.key for c in space.choices if len(c.options) > MAX_OPTIONS]
    if too_many:
        raise UsageError(f"search space `{space.name}`: choice {too_many[0]} has more than "
                         f"{MAX_OPTIONS} options, more than the environment's actions; split it, "
                         f"or use a strategy other than ppo")


class OnnxTuneEnv(gym.Env):
    """See the module's docstring. `workload`: a Workload, a path, zoo:NAME or an envs/ YAML;
    `search_space`: a SearchSpace or a name in search_spaces/; `reward`: a Reward or its name
    (log_speedup, memory, weighted:log_speedup=0.7,memory=0.3); `measurer`: a Measurer (a
    fake one in tests); by default the real one with the shared cache."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, workload: Any = "zoo:digits_cnn", search_space: Any = "lossless",
                 reward: Any = "log_speedup", max_accuracy_drop: float = 0.01,
                 measurer: Any = None, render_mode: str | None = None) -> None:
        from autotune import space as spaces
        from autotune import workload as workloads
        from autotune.tune import default_cache, sites_of

        self.workload = workload if hasattr(workload, "model_path") else (
            workloads.load(workload=Path(workload)) if str(workload).endswith((".yaml", ".yml"))
            else workloads.load(str(workload)))
        space = search_space if isinstance(search_space, SearchSpace) else spaces.load(search_space)
        found = sites_of(self.workload)
        self.space = space.bind(found) if space.needs_sites else space
        self.reward = make_reward(reward, max_accuracy_drop)
        self.measurer = measurer or Measurer(self.workload, cache=default_cache())
        self.render_mode = render_mode
        check_space(self.space)
        self.choices = list(self.space.choices)
        if not self.choices:
            raise UsageError(f"search space `{self.space.name}` has no choices for this model")
        self.site_of = {f"site:{s.id}": s for s in self.space.sites}
        self.action_space = gym.spaces.Discrete(MAX_OPTIONS)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(OBSERVATION),), np.float32)
        self._model = self._model_features(found)
        self.baseline: Measurement | None = None
        self.actions: list[int] = []
        self.last_reward: float | None = None

    # -- the Gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.baseline is None:
            self.baseline = self.measurer.measure(Plan())
            self.reward.reset(self.baseline)  # a baseline that failed is bad input: it raises
        self.actions = []
        self.last_reward = None
        return self._observation(), {}

    def step(self, action):
        if len(self.actions) >= len(self.choices):
            raise RuntimeError("the episode is over: call reset()")
        action = int(action)
        mask = self.action_masks()
        invalid = not (0 <= action < MAX_OPTIONS and mask[action])
        if invalid:
            action = 0
        choice = self.choices[len(self.actions)]
        self.actions.append(action)
        info: dict[str, Any] = {"choice": choice.key, "option": _plain(choice.options[action])}
        if invalid:
            info["invalid_action"] = True
        if len(self.actions) < len(self.choices):
            return self._observation(), 0.0, False, False, info
        try:
            plan = self.plan()
        except InvalidPlan as exc:  # masks keep agents out of this; a plain action may not
            plan, m = Plan(), Measurement.failed(f"not a valid plan: {exc}")
        else:
            m = self.measurer.measure(plan)
        self.last_reward = float(self.reward.update(m))
        info.update(plan=plan.to_dict(), plan_summary=plan.describe(), measurement=m.to_dict(),
                    cached=m.cached, reason=m.reason)
        return self._observation(), self.last_reward, True, False, info

    def action_masks(self) -> np.ndarray:
        """Which actions apply at the current step (all False once the episode is over)."""
        mask = np.zeros(MAX_OPTIONS, dtype=bool)
        step = len(self.actions)
        if step >= len(self.choices):
            return mask
        choice = self.choices[step]
        mask[:len(choice.options)] = True
        chosen = self.assignment()
        if not applies(choice.key, chosen):
            mask[1:] = False  # settings of a quantization or provider not chosen change nothing
        site = self.site_of.get(choice.key)
        if site is not None:
            earlier = [(self.site_of[k], v) for k, v in chosen.items()
                       if k in self.site_of and v != self.site_of[k].default]
            for i, option in enumerate(choice.options[1:], start=1):
                if any(site.conflicts(option, other, o) for other, o in earlier):
                    mask[i] = False
        elif not choice.key.startswith("site:"):  # a combination the plan refuses
            valid = mask.copy()
            for i in np.flatnonzero(mask):
                try:
                    self.space.plan({**chosen, choice.key: choice.options[i]})
                except InvalidPlan:
                    valid[i] = False
            if valid.any():
                mask = valid
        return mask

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = [f"{c.key} = {_plain(c.options[a])}" for c, a in zip(self.choices, self.actions)]
        if self.last_reward is not None:
            lines.append(f"reward {self.last_reward:.4f}")
        return "\n".join(lines)

    # -- state and plans ----------------------------------------------------------------------

    def assignment(self) -> dict[str, Any]:
        return {c.key: c.options[a] for c, a in zip(self.choices, self.actions)}

    def plan(self) -> Plan:
        """The Plan of the choices made so far (the rest left as the baseline has them)."""
        return self.space.plan(self.assignment())

    @property
    def state(self) -> dict[str, Any]:
        """(workload, search space, actions, reward): enough to rebuild the Plan anywhere."""
        from autotune import space as spaces

        return {"workload": self.workload.spec(), "workload_digest": self.workload.digest(),
                "search_space": spaces.to_spec(self.space), "actions": list(self.actions),
                "reward": self.last_reward, "reward_spec": self.reward.name,
                "max_accuracy_drop": self.reward.max_accuracy_drop}

    # -- observations -------------------------------------------------------------------------

    def _model_features(self, found: list[Site]) -> np.ndarray:
        import onnx

        model = onnx.load(str(self.workload.model_path), load_external_data=False)
        ops = [n.op_type for n in model.graph.node]
        flops = sum(s.features.get("flops", 0) for s in found if s.rule == "int8_node")
        self._flops = float(flops) or 1.0
        kinds = [sum(s.kind == k for s in self.space.sites) for k in KINDS]
        return np.array([math.log1p(len(ops)) / 10, math.log1p(flops) / 30,
                         ops.count("Conv") / max(len(ops), 1),
                         (ops.count("MatMul") + ops.count("Gemm")) / max(len(ops), 1),
                         *[math.log1p(k) / 5 for k in kinds]], dtype=np.float32)

    def _observation(self) -> np.ndarray:
        obs = np.zeros(len(OBSERVATION), dtype=np.float32)
        i = 0
        step = len(self.actions)
        choice = self.choices[step] if step < len(self.choices) else None
        if choice is not None:
            site = self.site_of.get(choice.key)
            rule = site.rule if site else choice.key.split(":")[1] if choice.key.startswith("site:") else None
            kind = f"site:{rule}" if rule else choice.key
            if kind in CHOICE_KINDS:
                obs[CHOICE_KINDS.index(kind)] = 1.0
        i += len(CHOICE_KINDS)
        if choice is not None and (site := self.site_of.get(choice.key)) is not None:
            ops = site.features.get("op_types", [])
            for j, op in enumerate(OP_TYPES):
                obs[i + j] = float(op in ops)
            obs[i + len(OP_TYPES)] = float(any(op not in OP_TYPES for op in ops))
            f = site.features
            obs[i + len(OP_TYPES) + 1:i + len(OP_TYPES) + 6] = [
                math.log1p(f.get("flops", 0)) / 25, math.log1p(f.get("bytes", 0)) / 25,
                math.log1p(f.get("nodes", 1)) / 5, f.get("position", 0.0), float(site.lossy)]
        i += len(OP_TYPES) + 6
        if choice is not None:
            obs[i] = len(choice.options) / MAX_OPTIONS
        i += 1
        obs[i:i + len(self._model)] = self._model
        i += len(self._model)
        chosen = self.assignment()
        picked = [(self.site_of[k], v) for k, v in chosen.items()
                  if k in self.site_of and v != self.site_of[k].default]
        for j, k in enumerate(KINDS):
            total = sum(s.kind == k for s in self.space.sites)
            obs[i + j] = sum(s.kind == k for s, _ in picked) / total if total else 0.0
        i += len(KINDS)
        obs[i] = min(1.0, sum(s.features.get("flops", 0) for s, v in picked
                              if v.startswith("int8") and s.rule == "int8_node") / self._flops
                     + sum(s.features.get("flops", 0) for s, v in picked
                           if v.startswith("int8") and s.rule == "int8_region") / self._flops)
        obs[i + 1] = float(chosen.get("quantization") == "static")
        obs[i + 2] = float(chosen.get("quantization") == "dynamic")
        levels = ("all", "layout", "extended", "basic", "disable")
        level = chosen.get("graph_optimization_level", "all")
        obs[i + 3] = levels.index(level) / 4 if level in levels else 0.0
        i += 4
        for p in PROVIDER_NAMES[1:]:
            obs[i] = float(chosen.get("execution_provider") == p)
            i += 1
        obs[i] = step / max(len(self.choices), 1)
        return np.clip(obs, 0.0, 1.0)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


register_envs()


def save_state(env: OnnxTuneEnv, path: Path) -> Path:
    """Writes `env.state` (after an episode: with its plan and measurement) as JSON."""
    import json

    env = getattr(env, "unwrapped", env)
    state = env.state
    if len(env.actions) == len(env.choices):
        state["plan"] = env.plan().to_dict()
        m = env.measurer.measure(env.plan())  # from the cache: it was just measured
        state["measurement"] = m.to_dict()
    path = Path(path)
    path.write_text(json.dumps(state, indent=2, default=str) + "\n")
    return path


def replay(state: dict[str, Any]):
    """(workload, plan, reward) rebuilt from a saved state: the workload from its spec (it must
    be the same content), the space from its spec bound to the model's sites, the plan from
    the actions."""
    from autotune import space as spaces
    from autotune import workload as workloads
    from autotune.errors import UsageError
    from autotune.tune import sites_of

    missing = [k for k in ("workload", "search_space", "actions") if k not in state]
    if missing:
        raise UsageError(f"not an environment state: no `{missing[0]}` (write one with "
                         f"autotune.env.save_state)")
    w = workloads.from_spec(state["workload"], state.get("workload_digest"))
    space = spaces.parse(state["search_space"])
    space = space.bind(sites_of(w)) if space.needs_sites else space
    if len(state["actions"]) > len(space.choices):
        raise UsageError(f"the state has {len(state['actions'])} actions, the space "
                         f"{len(space.choices)} choices: not the same space")
    for c, a in zip(space.choices, state["actions"]):
        if not 0 <= a < len(c.options):
            raise UsageError(f"action {a} for {c.key}, which has {len(c.options)} options")
    plan = space.plan({c.key: c.options[a] for c, a in zip(space.choices, state["actions"])})
    reward = make_reward(state.get("reward_spec", "log_speedup"),
                         state.get("max_accuracy_drop", 0.01))
    return w, plan, reward
