"""`autotune report`: the CSV, the tables built from it alone (byte for byte), provenance
and replay files, plots; on an experiment measured by the deterministic fake."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from autotune import experiment, report
from test_experiment import _fakes, _spec

AUTOTUNE = Path(sys.executable).parent / "autotune"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import mlp

    mlp_path = mlp(tmp / "mlp.onnx")
    spec = experiment.load(_spec(tmp, mlp_path, seeds=[0, 1, 2], budget=5))
    out = tmp / "out"
    experiment.run(spec, out, quiet=True, measurer_for=_fakes())
    return out


def _digests(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_the_csv_has_every_trial_and_pandas_reads_it(grid, tmp_path):
    out = report.report(grid, tmp_path / "r", plot=False)
    df = pd.read_csv(out / "trials.csv")
    assert list(df.columns) == list(report.COLUMNS)
    assert df["cached"].dtype == bool and df["exportable"].dtype == bool
    # presets one seed, random and tpe three: 7 cells, a baseline row each
    assert (df["status"] == "baseline").sum() == 7
    assert set(df["strategy"]) == {"presets", "random", "tpe"}
    measured = df[(df["status"] != "baseline") & ~df["cached"]]
    assert measured.groupby("cell").size().max() <= 5
    assert df["workload_digest"].nunique() == 1 and df["plan"].str.startswith("{").all()


def test_tables_say_what_the_trials_say(grid, tmp_path):
    out = report.report(grid, tmp_path / "r", plot=False)
    md = (out / "table.md").read_text()
    # the fake: per-channel INT8 is 3x at -0.5 points, within the 1-point limit; every seed of
    # every strategy measures it first (a start point of the space)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "3.000 [3.000, 3.000]" in rows["random"] and "-0.50 pt" in rows["random"]
    assert rows["random"].split("|")[2].strip() == "3"
    assert rows["random"].split("|")[4].strip() == "3/3"  # every seed beat the baseline
    assert "| presets | 1 | 3.000 | 1/1 | 5 |" in md  # dynamic INT8, its 5th plan
    tex = (out / "table.tex").read_text()
    assert "\\multicolumn{4}{c}{mlp}" in tex and "random & 3.000 [3.00, 3.00] & 1" in tex


def test_the_csv_alone_regenerates_everything_byte_for_byte(grid, tmp_path):
    first = report.report(grid, tmp_path / "r")
    assert {"best-so-far.png", "best-so-far.svg", "pareto.png", "pareto.svg"} <= {
        p.name for p in first.iterdir()}
    before = _digests(first)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "trials.csv").write_bytes((first / "trials.csv").read_bytes())
    proc = subprocess.run([str(AUTOTUNE), "report", str(copy)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert _digests(copy) == before


def test_every_best_has_a_replay_file_that_rebuilds_its_plan(grid, tmp_path):
    out = report.report(grid, tmp_path / "r", plot=False)
    prov = (out / "provenance.md").read_text()
    files = sorted((out / "replay").glob("*.json"))
    assert [f.name for f in files] == sorted(
        f"mlp--{s}--seed{n}.json" for s, seeds in (("presets", [0]), ("random", [0, 1, 2]),
                                                   ("tpe", [0, 1, 2])) for n in seeds)
    trial = json.loads(files[0].read_text())
    assert trial["measured"]["speedup"] == 3.0 and trial["source"]["cell"] in prov
    proc = subprocess.run([str(AUTOTUNE), "replay", str(files[0]), "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "static INT8" in proc.stdout or "int8" in proc.stdout.lower()
    assert (tmp_path / "c/model.onnx").is_file()
    # measured again for real, the fake's 3x does not hold (a real MLP gains little from INT8)
    proc = subprocess.run([str(AUTOTUNE), "replay", str(files[0]), "--validate"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "does not hold: speedup now" in proc.stdout


def test_evaluations_to_near_best():
    def row(i, speedup, ok=True):
        return {"evaluation": i, "speedup": speedup, "score": speedup, "exportable": ok}

    seed = report.Seed({}, [row(1, 0.9), row(2, 1.5, ok=False), row(3, 1.2), row(4, 1.21)])
    assert seed.best_speedup() == 1.21
    assert seed.curve(5) == [1.0, 1.0, 1.2, 1.21, 1.21]
    assert seed.evaluations_to_near_best() == 3  # log 1.2 >= 0.95 log 1.21
    assert report.Seed({}, [row(1, 0.8)]).evaluations_to_near_best() == 0


@pytest.mark.parametrize("source, message", [("nowhere", "does not exist"),
                                             (".", "neither an experiment")])
def test_bad_sources_exit_2(tmp_path, source, message):
    proc = subprocess.run([str(AUTOTUNE), "report", source], cwd=tmp_path, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _peer(tool, speedup, drop, **extra):
    return {"workload": "mlp", "model": "mlp.onnx", "tool": tool, "status": "ok",
            "speedup": speedup, "speedup_lo": speedup - 0.01, "speedup_hi": speedup + 0.01,
            "metric": "top1", "score": 0.9 - drop, "accuracy_drop": drop,
            "max_accuracy_drop": 0.01, "within_limit": drop <= 0.01, "seconds": 131.0,
            "evaluations": "12 acc.", "plan": "INT8 QDQ: 1 of 3 Conv/Gemm/MatMul", **extra}


def test_peers_beside_the_trials_show_side_by_side_and_regenerate(grid, tmp_path):
    first = report.report(grid, tmp_path / "r", plot=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "trials.csv").write_bytes((first / "trials.csv").read_bytes())
    peers = [_peer("NNCF accuracy control", 0.94, 0.002),
             _peer("NNCF quantize", 2.08, 0.057, evaluations=""),
             {**_peer("ORT dynamic INT8", 1.0, 0.0), "status": "failed", "reason": "no kernel"}]
    report.write_csv(peers, copy / report.PEERS, report.PEER_COLUMNS)
    out = report.report(copy / "trials.csv", tmp_path / "with-peers")
    md = (out / "table.md").read_text()
    side = md[md.index("Side by side:"):]
    assert "| NNCF accuracy control | 0.940 [0.930, 0.950] | -0.20 pt | 12 acc. | 131 |" in side
    assert "| NNCF quantize | 2.080 [2.070, 2.090] | -5.70 pt (over the limit) | - |" in side
    assert "| ORT dynamic INT8 | failed |" in side
    assert "NNCF accuracy control & 0.940" in (out / "table.tex").read_text()
    assert (out / report.PEERS).read_bytes() == (copy / report.PEERS).read_bytes()
    again = tmp_path / "again"
    again.mkdir()
    for name in ("trials.csv", report.PEERS):
        (again / name).write_bytes((out / name).read_bytes())
    report.report(again)
    assert _digests(again) == _digests(out)


def test_a_peers_csv_that_is_not_one_exits_2(grid, tmp_path):
    first = report.report(grid, tmp_path / "r", plot=False)
    (first / report.PEERS).write_text("tool,speedup\nx,1\n")
    proc = subprocess.run([str(AUTOTUNE), "report", str(first)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "is not a peers.csv of `autotune report`" in proc.stderr
    assert "Traceback" not in proc.stderr
