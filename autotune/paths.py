"""Where onnx-autotune keeps what it computes once per machine: trained zoo models, measurements."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$AUTOTUNE_CACHE_DIR, else $XDG_CACHE_HOME/onnx-autotune, else ~/.cache/onnx-autotune."""
    if os.environ.get("AUTOTUNE_CACHE_DIR"):
        root = Path(os.environ["AUTOTUNE_CACHE_DIR"]).absolute()  # workers run elsewhere
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").absolute() / "onnx-autotune"
    root.mkdir(parents=True, exist_ok=True)
    return root
