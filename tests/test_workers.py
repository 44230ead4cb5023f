"""Several `autotune worker` processes on one study in PostgreSQL, for real: the budget is used
exactly, no plan is measured twice, and a worker killed mid-trial leaves that trial failed.

Needs a PostgreSQL server: `.ci/run` starts one on loopback (`.ci/postgres`) and passes its URL
in AUTOTUNE_TEST_POSTGRES. Elsewhere the test is skipped unless that is set; under CI it fails.
"""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

URL = os.environ.get("AUTOTUNE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL and not os.environ.get("CI"),
                                reason="set AUTOTUNE_TEST_POSTGRES to a PostgreSQL URL (.ci/postgres)")
BUDGET = 20


def _autotune(*args, log):
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait(condition, seconds: float, what: str):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_workers_share_a_study_in_postgresql(tmp_path, mlp_path):
    import optuna

    assert URL, "CI must start PostgreSQL and set AUTOTUNE_TEST_POSTGRES (see .ci/postgres)"
    study = f"t{uuid.uuid4().hex[:8]}"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("tune", "b", "killed")}
    tuner = _autotune("tune", str(mlp_path), "--strategy", "tpe", "--budget", str(BUDGET),
                      "--storage", URL, "--study", study, "--heartbeat", "1",
                      "--out", str(tmp_path / "run"), log=logs["tune"])
    storage = optuna.storages.RDBStorage(URL)
    _wait(lambda: study in optuna.get_all_study_names(storage), 120, "the study")
    others = [_autotune("worker", "--storage", URL, "--study", study, log=logs[name])
              for name in ("b", "killed")]
    victim = others[1]

    def victim_trial():
        s = optuna.load_study(study_name=study, storage=storage)
        return next((t for t in s.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("claimed")
                     and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")), None)

    lost = _wait(victim_trial, 120, "the doomed worker to start measuring")
    victim.send_signal(signal.SIGKILL)
    for p in (tuner, others[0]):
        assert p.wait(timeout=600) == 0, (tmp_path / "tune.log").read_text()[-2000:]
    victim.wait()
    for name, f in logs.items():
        f.close()
        print(f"--- {name}.log\n{(tmp_path / f'{name}.log').read_text()}")  # shown if it fails

    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    counted = [t for t in trials if t.user_attrs.get("claimed") and "skipped" not in t.user_attrs
               and not t.user_attrs.get("cached")]
    assert len(counted) == BUDGET
    assert len({t.number for t in counted}) == BUDGET
    measured = [t.user_attrs["plan_digest"] for t in counted if "measurement" in t.user_attrs]
    assert len(measured) == len(set(measured)) == BUDGET - 1  # none twice; one lost to the kill
    killed = trials[lost.number]
    assert killed.state == optuna.trial.TrialState.FAIL and "measurement" not in killed.user_attrs
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    hosts = {t.user_attrs.get("host") for t in counted}
    assert hosts == {os.uname().nodename}  # each trial says which machine measured it

    # The run directory reads the study: the killed trial is a failed trial with its reason.
    from autotune.store import RunStore

    failed = [t for t in RunStore(tmp_path / "run").trials() if t.number == lost.number]
    assert "stopped during the measurement" in failed[0].measurement.reason
    assert (tmp_path / "run/best/report.json").is_file()
    said = (tmp_path / "tune.log").read_text() + (tmp_path / "b.log").read_text()
    assert "another worker" in said and "one worker per machine" in said
