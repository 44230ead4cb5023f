"""The experiment launcher: specs, the grid, resuming after a stop (fake measurer), and a real
kill of `autotune experiment run` (tiny model, short protocol; no timing asserted)."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autotune import experiment
from autotune import space as spaces
from autotune.errors import UsageError
from autotune.store import RunStore
from autotune.tune import tune
from test_tune import FakeMeasurer

AUTOTUNE = Path(sys.executable).parent / "autotune"


def _spec(tmp_path, mlp_path, **over) -> Path:
    spec = {"name": "tiny", "workloads": [mlp_path.name], "search_space": "runtime",
            "strategies": ["presets", "random", "tpe"], "seeds": [0, 1], "budget": 4,
            "protocol": {"min_seconds": 0.2, "min_runs": 5, "warmup_runs": 1}, **over}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fakes():
    made = {}

    def measurer_for(w, protocol, cache):
        return made.setdefault(w.name, FakeMeasurer(w))

    return measurer_for


def _trials(cell_dir):
    return [(t.number, t.plan.digest(), t.measurement.status)
            for t in RunStore(cell_dir).trials() if not t.is_baseline]


def test_grid_runs_seed_by_seed_and_presets_once(tmp_path, mlp_path):
    spec = experiment.load(_spec(tmp_path, mlp_path))
    grid = [str(c) for c in experiment.cells(spec)]
    assert grid == ["mlp · presets · seed 0", "mlp · random · seed 0", "mlp · tpe · seed 0",
                    "mlp · random · seed 1", "mlp · tpe · seed 1"]


def test_run_finishes_every_cell_and_a_rerun_runs_none(tmp_path, mlp_path):
    spec = experiment.load(_spec(tmp_path, mlp_path))
    out = tmp_path / "out"
    ran = experiment.run(spec, out, quiet=True, measurer_for=_fakes())
    assert len(ran) == 5
    for cell in experiment.cells(spec):
        assert experiment.finished(cell.dir(out))
    before = {c: _trials(c.dir(out)) for c in experiment.cells(spec)}
    # the cache in the grid's directory: per-channel INT8 is the fake's best, 3x
    best = RunStore(out / "cells/mlp/random/seed-0").run_info()
    assert best["budget"] == 4
    assert experiment.run(spec, out, quiet=True, measurer_for=_fakes()) == []
    assert {c: _trials(c.dir(out)) for c in experiment.cells(spec)} == before


class Interrupting(FakeMeasurer):
    """Stops the run (as Ctrl-C would) at its `at`-th measurement."""

    def __init__(self, w, at):
        super().__init__(w)
        self.at = at

    def measure(self, plan):
        if self.calls + 1 == self.at:
            raise KeyboardInterrupt
        return super().measure(plan)


def test_a_stopped_cell_resumes_keeping_its_trials(tmp_path, mlp_path):
    spec = experiment.load(_spec(tmp_path, mlp_path, strategies=["random"], seeds=[0]))
    out = tmp_path / "out"
    cell = experiment.cells(spec)[0]
    w = experiment.load_workload(cell.ref)
    with pytest.raises(KeyboardInterrupt):
        tune(w, spaces.load("runtime"), strategy="random",
             budget=4, seed=0, out=cell.dir(out), quiet=True, measurer=Interrupting(w, 4))
    kept = _trials(cell.dir(out))
    assert len(kept) == 2 and not experiment.finished(cell.dir(out))
    # a killed worker leaves its trial open: the resume sets it aside
    ledger = RunStore(cell.dir(out)).ledger()
    ledger.study.ask()
    lines = experiment.plan_lines(spec, out)
    assert any("resumes after 2 of 4" in line for line in lines)
    ran = experiment.run(spec, out, quiet=True, measurer_for=_fakes())
    assert ran == [cell] and experiment.finished(cell.dir(out))
    after = _trials(cell.dir(out))
    assert after[:2] == kept  # nothing finished was lost
    measured = [t for t in RunStore(cell.dir(out)).trials()
                if not t.is_baseline and not t.measurement.cached]
    assert len(measured) == 4  # the budget, once
    baselines = [t for t in RunStore(cell.dir(out)).trials() if t.is_baseline]
    assert len(baselines) == 1


@pytest.mark.parametrize("change, message", [
    ({"strategies": ["tpee"]}, "Did you mean `tpe`?"),
    ({"budgett": 3}, "unknown key `budgett`"),
    ({"workloads": ["missing.yaml"]}, "does not exist"),
    ({"strategies": ["random", {"name": "tpe", "label": "random"}]}, "two strategies"),
    ({"strategies": [{"name": "tpe", "policy": "p.zip"}]}, "goes with strategy ppo"),
    ({"seeds": []}, "seeds"),
    ({"budget": 0}, "budget must be an integer >= 1"),
    ({"protocol": {"min_second": 1}}, "unknown key `min_second`"),
    ({"search_space": "nope"}, "no search space `nope`"),
])
def test_bad_specs_say_what_is_wrong(tmp_path, mlp_path, change, message):
    with pytest.raises(UsageError, match=message.replace("?", r"\?")):
        experiment.load(_spec(tmp_path, mlp_path, **change))


def test_cli_bad_spec_is_one_line_and_exit_2(tmp_path, mlp_path):
    spec = _spec(tmp_path, mlp_path, strategies=["tpee"])
    proc = subprocess.run([str(AUTOTUNE), "experiment", "run", str(spec), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _open_trials(db: Path) -> int:
    """Trials Optuna holds as RUNNING; 0 while the launcher is still creating the schema."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet, or locked mid-migration
        return 0


def test_killing_the_launcher_and_running_it_again_finishes_the_grid(tmp_path, mlp_path):
    """For real: SIGKILL while the second cell measures, then the same command again."""
    spec_path = _spec(tmp_path, mlp_path, strategies=["random"], seeds=[0, 1], budget=3)
    out = tmp_path / "out"
    command = [str(AUTOTUNE), "experiment", "run", str(spec_path), "--out", str(out), "-q"]
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    second = out / "cells/mlp/random/seed-1"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        db = second / "study.db"
        if db.exists() and _open_trials(db) and len(_trials(second)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out / "cells/mlp/random/seed-0"
    assert experiment.finished(first) and not experiment.finished(second)
    done_first = _trials(first)
    done_second = [t for t in _trials(second) if t[2] == "ok"]
    assert done_second
    rerun = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 run now" in rerun.stdout
    assert _trials(first) == done_first  # not run twice
    assert _trials(second)[:len(done_second)] == done_second  # nothing finished lost
    assert experiment.finished(second)
    measured = [t for t in RunStore(second).trials()
                if not t.is_baseline and not t.measurement.cached]
    assert len(measured) == 3
