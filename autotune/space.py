"""Search spaces: which choices are on and which options each has, loaded from YAML.

A space is the one source of truth for every strategy: an assignment of one option per
choice becomes a Plan through `SearchSpace.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autotune import optimizers, providers
from autotune.errors import UsageError, did_you_mean
from autotune.plan import Plan, Quantization, RuntimeChoices
from autotune.sites import RULES, Site, compatible



def _builtin_spaces():
    """The search spaces that ship with onnx-autotune: inside the installed package (a wheel's
    autotune/search_spaces/), or the project's search_spaces/ (a checkout, an editable install)."""
    from importlib import resources

    packaged = resources.files("autotune").joinpath("search_spaces")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "search_spaces"


SPACES_DIR = _builtin_spaces()
_RUNTIME_KEYS = {f.name for f in fields(RuntimeChoices)} - {"provider_options"}
_QUANT_KEYS = {f"quantization.{f.name}" for f in fields(Quantization) if f.name != "mode"}
PROVIDER_KEYS = set(providers.OPTION_KEYS)  # <provider>.<option>, e.g. openvino.precision
KEYS = _RUNTIME_KEYS | _QUANT_KEYS | {"quantization"} | PROVIDER_KEYS
_STATIC_ONLY = ("quantization.calibration", "quantization.activation_type")


def applies(key: str, chosen: dict[str, Any]) -> bool:
    """Whether the setting `key` can change the plan, given the choices made before it: the
    settings of a quantization not chosen, or of a provider not chosen, change nothing."""
    if key.startswith("quantization."):
        mode = chosen.get("quantization", "none")
        return mode == "static" or (mode == "dynamic" and key not in _STATIC_ONLY)
    if key in PROVIDER_KEYS:
        return chosen.get("execution_provider", "cpu") == key.split(".", 1)[0]
    return True


@dataclass(frozen=True)
class Choice:
    key: str
    options: tuple[Any, ...]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    choices: tuple[Choice, ...]
    start: tuple[dict[str, Any], ...] = ()
    site_rules: tuple[tuple[str, tuple[str, ...]], ...] = ()  # rule -> options allowed
    sites: tuple[Site, ...] = ()  # the model's sites once bound, in catalogue order
    notes: tuple[str, ...] = ()  # what `for_machine` left out, and why

    @property
    def needs_sites(self) -> bool:
        return bool(self.site_rules) and not any(c.key.startswith("site:") for c in self.choices)

    def bind(self, sites: list[Site]) -> SearchSpace:
        """The space over one model: a choice `site:<id>` for every site of an enabled rule."""
        allowed = dict(self.site_rules)
        extra = []
        for site in sites:
            if site.rule in allowed:
                options = tuple(o for o in site.options if o in allowed[site.rule])
                if len(options) > 1:
                    extra.append(Choice(f"site:{site.id}", options))
        return replace(self, choices=self.choices + tuple(extra),
                       sites=tuple(s for s in sites if s.rule in allowed))

    @property
    def site_choices(self) -> list[Choice]:
        return [c for c in self.choices if c.key.startswith("site:")]

    def plan(self, assignment: dict[str, Any]) -> Plan:
        """The Plan for an assignment; choices it leaves out keep the baseline's value.

        Site options equal to the site's first option (keep) are left out of the Plan, and so is
        a site that conflicts with one chosen before it (in catalogue order): every assignment
        gives a plan that can be built, as the environment's action masks do step by step."""
        defaults = {c.key: c.options[0] for c in self.site_choices}
        sites = {k[5:]: v for k, v in assignment.items()
                 if k.startswith("site:") and v != defaults.get(k)}
        if self.sites and sites:
            _, dropped = compatible([(s, sites[s.id]) for s in self.sites if s.id in sites])
            for site, _ in dropped:
                del sites[site.id]
        runtime = {k: v for k, v in assignment.items() if k in _RUNTIME_KEYS}
        if "disabled_optimizers" in runtime:
            runtime["disabled_optimizers"] = tuple(runtime["disabled_optimizers"])
        provider = runtime.get("execution_provider", "cpu")
        runtime["provider_options"] = tuple((k.split(".", 1)[1], v) for k, v in assignment.items()
                                            if k in PROVIDER_KEYS and k.startswith(provider + "."))
        quant = None
        mode = assignment.get("quantization", "none")
        if mode != "none":
            quant = Quantization(mode=mode, **{k.split(".", 1)[1]: v for k, v in assignment.items()
                                               if k.startswith("quantization.")})
        return Plan(RuntimeChoices(**runtime), quant, tuple(sites.items()))

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {c.key: c.options[rng.integers(len(c.options))] for c in self.choices}

    def size(self) -> int:
        return int(np.prod([len(c.options) for c in self.choices]))

    def for_machine(self, found: dict[str, providers.Availability] | None = None) -> SearchSpace:
        """The space without what this machine lacks, and a note for each saying why: the
        execution providers it does not have (their options and start points go with them),
        and Entropy calibration where the installed quantizer cannot run it."""
        from autotune.quantize import reads_ranges

        found = found if found is not None else providers.available()
        asked = next((c.options for c in self.choices if c.key == "execution_provider"), ())
        missing = [p for p in asked if p in found and not found[p].ok]
        kept = tuple(p for p in asked if p not in missing)
        notes = [f"execution provider {p}: not offered: {found[p].how}" for p in missing]
        if asked and not kept:
            raise UsageError(f"search space `{self.name}`: none of its execution providers is on "
                             f"this machine; {'; '.join(notes)}")
        no_entropy = not reads_ranges() and any(
            c.key == "quantization.calibration" and "entropy" in c.options for c in self.choices)
        if no_entropy:
            notes.append("calibration entropy: not offered: this onnxruntime's quantize_static "
                         "takes no calibrated ranges (calibration_cache_path)")
        if not notes:
            return self
        choices = []
        for c in self.choices:
            if c.key == "execution_provider":
                if kept != ("cpu",):  # the baseline's alone is no choice
                    choices.append(Choice(c.key, kept))
            elif c.key == "quantization.calibration" and no_entropy:
                choices.append(Choice(c.key, tuple(o for o in c.options if o != "entropy")))
            elif c.key not in PROVIDER_KEYS or c.key.split(".", 1)[0] in kept:
                choices.append(c)
        start = tuple(p for p in self.start if p.get("execution_provider", "cpu") not in missing
                      and not (no_entropy and p.get("quantization.calibration") == "entropy"))
        return replace(self, choices=tuple(choices), start=start, notes=self.notes + tuple(notes))


def load(name_or_path: str, machine: bool = True) -> SearchSpace:
    """A space by name (a file in search_spaces/) or by path; with `machine`, only the
    execution providers this machine has (`SearchSpace.for_machine`)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in SPACES_DIR.iterdir() if p.name.endswith(".yaml"))
        raise UsageError(f"no search space `{name_or_path}`.{did_you_mean(name_or_path, known)} "
                         f"Known: {', '.join(known)}, or give a path to a YAML file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    space = parse({"name": path.stem, **spec} if isinstance(spec, dict) else spec, path)
    return space.for_machine() if machine else space


def to_spec(space: SearchSpace) -> dict[str, Any]:
    """The space as the YAML it was read from (as plain data), for `parse` on another machine."""
    return {"name": space.name, "description": space.description,
            "choices": {c.key: [list(o) if isinstance(o, tuple) else o for o in c.options]
                        for c in space.choices if not c.key.startswith("site:")},
            "sites": {rule: list(options) for rule, options in space.site_rules},
            "start": [dict(p) for p in space.start]}


def parse(spec: dict[str, Any], path: Path | str = "search space") -> SearchSpace:
    """A space from its YAML's content; `path` names it in errors."""
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: a search space is a mapping with `choices` and/or `sites`")
    top = ["name", "description", "choices", "sites", "start"]
    unknown = set(spec) - set(top)
    if unknown:
        key = sorted(unknown)[0]
        raise UsageError(f"{path}: unknown key `{key}`.{did_you_mean(key, top)}")
    site_rules = []
    for rule, options in (spec.get("sites") or {}).items():
        if rule not in RULES:
            raise UsageError(f"{path}: unknown site rule `{rule}`.{did_you_mean(rule, RULES)} "
                             f"Known: {', '.join(sorted(RULES))}")
        if not isinstance(options, list) or not set(options) <= set(RULES[rule]):
            raise UsageError(f"{path}: site rule `{rule}` takes options from "
                             f"{', '.join(RULES[rule])}, got {options!r}")
        site_rules.append((rule, tuple(options)))
    choices = []
    for key, options in (spec.get("choices") or {}).items():
        if key not in KEYS:
            raise UsageError(f"{path}: unknown choice `{key}`.{did_you_mean(key, KEYS)}")
        if not isinstance(options, list) or not options:
            raise UsageError(f"{path}: choice `{key}` needs a non-empty list of options")
        options = tuple(tuple(o) if isinstance(o, list) else o for o in options)
        if key == "disabled_optimizers":
            for option in options:
                optimizers.check(option)
        choices.append(Choice(key, options))
    space = SearchSpace(spec.get("name", "unnamed"), spec.get("description", ""), tuple(choices),
                        tuple(spec.get("start") or ()), tuple(site_rules))
    for c in space.choices:  # every option must make a valid plan
        for option in c.options:
            extra = {"quantization": "static"} if c.key.startswith("quantization.") else {}
            if c.key in PROVIDER_KEYS:
                extra["execution_provider"] = c.key.split(".", 1)[0]
            if c.key == "quantization.weight_type":
                extra["quantization.activation_type"] = "uint8"
            space.plan({**extra, c.key: option})
    for point in space.start:
        for key in point:
            if key not in KEYS:
                raise UsageError(f"{path}: start point has unknown choice `{key}`.{did_you_mean(key, KEYS)}")
        space.plan(point)
    return space
