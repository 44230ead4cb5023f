"""Bad input: one line naming the problem, exit 2, no traceback, nothing under RUN_DIR."""
from pathlib import Path

import onnx
import pytest
from onnx import helper

from autotune.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def _custom_op_model(path):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.custom")],
                              "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("example.custom", 1)]), path)
    return path


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"),
    ("corrupt", "not a readable ONNX model"),
    ("unbound", "unbound dynamic dimension"),
    ("unknown_key", "unknown key `metrics`. Did you mean `metric`"),
    ("wrong_type", "`data` expects dict"),
    ("custom_op", "does not run on ONNX Runtime"),
    ("bad_space", "no search space `runtim`. Did you mean `runtime`"),
    ("bad_strategy", "no strategy `randon`. Did you mean `random`"),
    ("empty", "is empty (0 bytes), not an ONNX model"),
    ("directory", "is a directory; give the .onnx file in it"),
    ("pickled_npz", "is not an .npz of plain arrays"),
    ("out_is_a_file", "is a file; give a directory"),
    ("drop_over_the_scale", "more than the whole top-1 scale"),
    ("ppo_too_many_options", "more than 8 options"),
    ("argparse", "invalid int value"),
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys, mlp_path, case, expect):
    out = tmp_path / "run"
    args = ["tune", "--out", str(out), "--budget", "1", "-q"]
    if case == "missing":
        args.insert(1, str(tmp_path / "nope.onnx"))
    elif case == "corrupt":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(mlp_path.read_bytes()[:50])
        args.insert(1, str(bad))
    elif case == "unbound":
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "n"])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "n"])])
        path = tmp_path / "dyn.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        args.insert(1, str(path))
    elif case in ("unknown_key", "wrong_type"):
        spec = tmp_path / "w.yaml"
        body = "metrics: top1" if case == "unknown_key" else "data: [1, 2]"
        spec.write_text(f"model: {mlp_path}\n{body}\n")
        args += ["--workload", str(spec)]
    elif case == "custom_op":
        args.insert(1, str(_custom_op_model(tmp_path / "custom.onnx")))
    elif case == "bad_space":
        args += [str(mlp_path), "--search-space", "runtim"]
    elif case == "bad_strategy":
        args += [str(mlp_path), "--strategy", "randon"]
    elif case == "empty":
        (tmp_path / "empty.onnx").write_bytes(b"")
        args.insert(1, str(tmp_path / "empty.onnx"))
    elif case == "directory":
        (tmp_path / "model.onnx").mkdir()
        args.insert(1, str(tmp_path / "model.onnx"))
    elif case == "pickled_npz":
        import numpy as np

        np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}] * 8, dtype=object))
        spec = tmp_path / "w.yaml"
        spec.write_text(f"model: {mlp_path}\nshapes: {{x: [1, 16]}}\n"
                        f"data: {{source: npz, path: d.npz}}\n")
        args += ["--workload", str(spec)]
    elif case == "out_is_a_file":
        out.write_text("mine")
        args.insert(1, str(mlp_path))
    elif case == "drop_over_the_scale":
        from autotune import zoo

        zoo.ensure("digits_cnn")  # trained before: its progress is not the error
        capsys.readouterr()
        args += ["zoo:digits_cnn", "--max-accuracy-drop", "5"]
    elif case == "ppo_too_many_options":
        space = tmp_path / "wide.yaml"
        space.write_text("choices:\n  intra_op_threads: [0, 1, 2, 3, 4, 5, 6, 7, 8]\n")
        args += [str(mlp_path), "--strategy", "ppo", "--search-space", str(space)]
    elif case == "argparse":
        args += [str(mlp_path), "--budget", "x"]
    if case == "argparse":
        with pytest.raises(SystemExit) as stop:
            main(args)
        code, err = stop.value.code, capsys.readouterr().err.strip()
    else:
        code, err = _run(capsys, *args)
    assert code == 2
    assert expect in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if case == "out_is_a_file":
        assert out.read_text() == "mine"
    else:
        assert not out.exists()


def test_verify_refuses_a_directory_that_is_not_a_tuned_model(tmp_path, capsys):
    code, err = _run(capsys, "verify", str(tmp_path))
    assert code == 2 and "not a tuned-model directory" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished digits_cnn run (budget 1), for the verbs that read one."""
    from tests.conftest import mlp

    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    assert main(["tune", str(mlp(tmp / "mlp.onnx")), "--budget", "1", "--out", str(out), "-q"]) == 0
    return out


@pytest.mark.parametrize("case, expect", [
    ("verify_edited_report", "did not write"),
    ("verify_report_not_json", "did not write"),
    ("export_over_existing", "already exists; choose another --out, or add --force"),
    ("state_corrupt", "cannot read"),
    ("sites_empty_model", "is empty (0 bytes)"),
    ("sites_unsafe_yaml", "is not valid YAML"),
    ("report_missing", "does not exist"),
    ("experiment_not_a_mapping", "an experiment is a mapping"),
    ("worker_no_study", "no study"),
    ("export_not_a_run", "not a run directory"),
])
def test_other_verbs_refuse_bad_input_in_one_line(tmp_path, capsys, finished_run, case, expect):
    import json
    import shutil

    if case.startswith("verify"):
        d = tmp_path / "best"
        shutil.copytree(finished_run / "best", d)
        report = d / "report.json"
        if case == "verify_edited_report":
            report.write_text(json.dumps({**json.loads(report.read_text()), "objective": "x"}))
        else:
            report.write_text("{not json")
        args = ["verify", str(d)]
    elif case == "export_over_existing":
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "keep.txt").write_text("mine")
        args = ["export", str(finished_run), "--out", str(tmp_path / "mine")]
    elif case == "state_corrupt":
        (tmp_path / "state.json").write_text("[1, 2")
        args = ["replay", str(tmp_path / "state.json")]
    elif case == "sites_empty_model":
        (tmp_path / "m.onnx").write_bytes(b"")
        args = ["sites", str(tmp_path / "m.onnx")]
    elif case == "sites_unsafe_yaml":
        (tmp_path / "w.yaml").write_text('!!python/object/apply:os.system ["true"]\n')
        args = ["sites", "--workload", str(tmp_path / "w.yaml")]
    elif case == "report_missing":
        args = ["report", str(tmp_path / "nowhere")]
    elif case == "experiment_not_a_mapping":
        (tmp_path / "e.yaml").write_text("[1, 2]\n")
        args = ["experiment", "run", str(tmp_path / "e.yaml"), "--dry-run"]
    elif case == "worker_no_study":
        args = ["worker", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "x", "-q"]
    else:
        args = ["export", str(tmp_path)]
    code, err = _run(capsys, *args)
    assert code == 2, err
    assert expect in err and len(err.splitlines()) == 1 and "Traceback" not in err
    if case == "export_over_existing":
        assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("verb", [["zoo", "export", "digits_cnn"], ["agent", "train", "--workloads",
                                                                    "zoo:digits_cnn"]])
def test_commands_that_write_a_file_refuse_one_that_exists(tmp_path, capsys, verb):
    mine = tmp_path / "mine"
    mine.write_text("mine")
    code, err = _run(capsys, *verb, "-o", str(mine))
    assert code == 2 and "already exists" in err and "--force" in err
    assert mine.read_text() == "mine"


def test_export_replaces_an_existing_directory_only_with_force(tmp_path, capsys, finished_run):
    (tmp_path / "mine").mkdir()
    assert main(["export", str(finished_run), "-o", str(tmp_path / "mine"), "--force"]) == 0
    assert (tmp_path / "mine" / "report.json").is_file()


def test_unknown_zoo_model(capsys, tmp_path):
    code, err = _run(capsys, "zoo", "export", "resnet19", "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "Did you mean `resnet18`" in err


def _stop_mid_trial(command, out, sig):
    """Starts `command` and sends `sig` to it while a trial after the first is measured."""
    import os
    import subprocess
    import time

    from autotune.store import RunStore
    from tests.test_experiment import _open_trials

    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    db = out / "study.db"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and _open_trials(db) and len(RunStore(out).trials()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    return proc.returncode, proc.stderr.read().decode()


def _command(out, mlp_path):
    import sys

    autotune = Path(sys.executable).parent / "autotune"
    return [str(autotune), "tune", str(mlp_path), "--budget", "3", "--out", str(out), "-q"]


def test_ctrl_c_stops_a_tune_with_a_line_saying_how_to_resume(tmp_path, mlp_path):
    import signal
    import subprocess

    out = tmp_path / "run"
    code, err = _stop_mid_trial(_command(out, mlp_path), out, signal.SIGINT)
    assert code == 130
    assert err.strip().splitlines()[-1] == (f"autotune: interrupted; run the same command again "
                                            f"to resume the run in {out}")
    again = subprocess.run(_command(out, mlp_path), capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "best" / "report.json").is_file()


def test_a_killed_tune_resumes_with_the_same_command_and_refuses_other_arguments(tmp_path, mlp_path):
    """For real: SIGKILL while a trial is measured, then the same command finishes the budget
    with no finished trial lost or measured twice; other arguments are refused in one line."""
    import signal
    import subprocess

    from autotune.store import RunStore

    out = tmp_path / "run"
    command = _command(out, mlp_path)
    _stop_mid_trial(command, out, signal.SIGKILL)
    done = [(t.number, t.plan.digest()) for t in RunStore(out).trials() if not t.is_baseline]
    assert done and not (out / "best").exists()
    other = subprocess.run([*command[:4], "5", *command[5:]], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
    assert other.returncode == 2 and "budget is 3, not 5" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    again = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = [t for t in RunStore(out).trials() if not t.is_baseline]
    assert [(t.number, t.plan.digest()) for t in trials][:len(done)] == done
    measured = [t for t in trials if not t.measurement.cached]
    assert len(measured) == 3 and len({t.plan.digest() for t in measured}) == 3
    assert (out / "best" / "report.json").is_file()
