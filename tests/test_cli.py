"""Bad input: one line naming the problem, exit 2, no traceback, nothing under RUN_DIR."""
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
    code, err = _run(capsys, *args)
    assert code == 2
    assert expect in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_verify_refuses_a_directory_that_is_not_a_tuned_model(tmp_path, capsys):
    code, err = _run(capsys, "verify", str(tmp_path))
    assert code == 2 and "not a tuned-model directory" in err


def test_unknown_zoo_model(capsys, tmp_path):
    code, err = _run(capsys, "zoo", "export", "resnet19", "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "Did you mean `resnet18`" in err
