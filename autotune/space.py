"""Search spaces: which choices are on and which options each has, loaded from YAML.

A space is the one source of truth for every strategy: an assignment of one option per
choice becomes a Plan through `SearchSpace.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autotune import optimizers
from autotune.errors import UsageError, did_you_mean
from autotune.plan import Plan, Quantization, RuntimeChoices

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_RUNTIME_KEYS = {f.name for f in fields(RuntimeChoices)}
_QUANT_KEYS = {f"quantization.{f.name}" for f in fields(Quantization)}
KEYS = _RUNTIME_KEYS | _QUANT_KEYS | {"quantization"}


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

    def plan(self, assignment: dict[str, Any]) -> Plan:
        """The Plan for an assignment; choices it leaves out keep the baseline's value."""
        runtime = {k: v for k, v in assignment.items() if k in _RUNTIME_KEYS}
        if "disabled_optimizers" in runtime:
            runtime["disabled_optimizers"] = tuple(runtime["disabled_optimizers"])
        quant = None
        if assignment.get("quantization", "none") == "static":
            quant = Quantization(**{k.split(".", 1)[1]: v for k, v in assignment.items()
                                    if k.startswith("quantization.")})
        return Plan(RuntimeChoices(**runtime), quant)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {c.key: c.options[rng.integers(len(c.options))] for c in self.choices}

    def size(self) -> int:
        return int(np.prod([len(c.options) for c in self.choices]))


def load(name_or_path: str) -> SearchSpace:
    """A space by name (a file in search_spaces/) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise UsageError(f"no search space `{name_or_path}`.{did_you_mean(name_or_path, known)} "
                         f"Known: {', '.join(known)}, or give a path to a YAML file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    unknown = set(spec) - {"name", "description", "choices", "start"}
    if unknown:
        key = sorted(unknown)[0]
        raise UsageError(f"{path}: unknown key `{key}`.{did_you_mean(key, ['name', 'description', 'choices', 'start'])}")
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
    space = SearchSpace(spec.get("name", path.stem), spec.get("description", ""), tuple(choices),
                        tuple(spec.get("start") or ()))
    for c in space.choices:  # every option must make a valid plan
        for option in c.options:
            extra = {"quantization": "static"} if c.key.startswith("quantization.") else {}
            if c.key == "quantization.weight_type":
                extra["quantization.activation_type"] = "uint8"
            space.plan({**extra, c.key: option})
    for point in space.start:
        for key in point:
            if key not in KEYS:
                raise UsageError(f"{path}: start point has unknown choice `{key}`.{did_you_mean(key, KEYS)}")
        space.plan(point)
    return space
