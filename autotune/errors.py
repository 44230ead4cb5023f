"""The one error family of onnx-autotune: the CLI prints any of them as one line and exits 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutotuneError(Exception):
    """Bad input or an unusable model: a message that names the problem and the fix."""


class UsageError(AutotuneError):
    """A command-line argument or a spec file is wrong."""


class ModelError(AutotuneError):
    """The model file is missing, unreadable, or cannot run on ONNX Runtime."""


class WorkloadError(AutotuneError):
    """A workload spec or its data does not fit the model."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Returns ' Did you mean `x`?' for the closest of `choices`, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean `{close[0]}`?" if close else ""
