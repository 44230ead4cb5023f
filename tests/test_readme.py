"""README's examples, run as written (the digits ones; the ResNet quick start is benchmarks')."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    first = _blocks("bash")[0].strip().splitlines()
    assert first[0].startswith("./setup.sh && .venv/bin/autotune tune")
    assert first[1] == './setup.sh && .venv/bin/python -m pytest -m "not slow"'
    assert first[1] in (README.parent / ".ci/run").read_text()


def test_readme_commands_and_loader_run(tmp_path):
    commands = [line[2:] for block in _blocks("console") for line in block.splitlines()
                if line.startswith("$ autotune")]
    assert len(commands) == 10
    import shutil

    for folder in ("envs", "experiments"):  # the experiment example reads them, relative
        shutil.copytree(README.parent / folder, tmp_path / folder)
    autotune = Path(sys.executable).parent / "autotune"
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run([str(autotune), *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
    assert (tmp_path / "runs/digits/best/model.onnx").exists()
    assert (tmp_path / "results/smoke/table.md").read_text().count("| random | 2 |") == 1
    loader = next(b for b in _blocks("python") if "InferenceSession" in b)
    scope = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(loader, scope)
    finally:
        os.chdir(cwd)
    import numpy as np

    out = scope["session"].run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert out.shape == (2, 10)


def test_readme_environment_example_runs():
    block = next(b for b in _blocks("python") if "gymnasium.make" in b)
    scope = {}
    exec(block, scope)
    info = scope["info"]
    assert scope["terminated"] and "plan_summary" in info and "measurement" in info


def test_readme_metric_example_judges_a_run(tmp_path):
    from autotune.cli import main
    from autotune.store import RunStore
    from tests.conftest import mlp

    code = next(b for b in _blocks("python") if "def within_tolerance" in b)
    spec = next(b for b in _blocks("yaml") if "function: my_metric.py" in b)
    (tmp_path / "my_metric.py").write_text(code)
    mlp(tmp_path / "my-model.onnx")  # output `y`, as the example reads
    (tmp_path / "my-workload.yaml").write_text(spec)
    out = tmp_path / "run"
    assert main(["tune", "--workload", str(tmp_path / "my-workload.yaml"), "--search-space",
                 "cpu-int8", "--budget", "1", "--out", str(out), "-q"]) == 0
    trials = RunStore(out).trials()
    assert [t.measurement.metric for t in trials] == ["function", "function"]
    assert trials[0].measurement.accuracy == 1.0 and 0 < trials[1].measurement.accuracy <= 1.0
