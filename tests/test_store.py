"""The ledger: trials in an Optuna study, claimed so that workers sharing it never measure one
plan twice nor overrun the budget, and a silent worker's trial failed, not lost."""
import threading
import time

import optuna
import pytest

from autotune.measure import Measurement
from autotune.plan import Plan, Quantization, RuntimeChoices
from autotune.store import Ledger, Trial, mask

ATTRS = {"strategy": "random", "seed": 0, "host": "here"}
PLANS = [Plan(RuntimeChoices(graph_optimization_level=level)) for level in ("basic", "extended", "layout")]


def ok(speedup: float, cached: bool = False) -> Measurement:
    return Measurement("ok", latency_ms=1 / speedup, latency_ci=(0.9 / speedup, 1.1 / speedup),
                       baseline_ms=1.0, baseline_ci=(0.9, 1.1), speedup=speedup,
                       speedup_ci=(speedup * 0.95, speedup * 1.05), runs=20, peak_memory_mb=10.0,
                       accuracy=0.9, metric="top1", cached=cached)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def _ledger(url, heartbeat=10):
    return Ledger.create(url, "s", {"budget": 2}, ["maximize"], heartbeat)


def _record(ledger, otrial, plan, m):
    ledger.record(otrial, Trial(otrial.number, plan, m, "random", 0, m.speedup, False, "", "here"),
                  0.0 if m.ok else -2.0)


def test_a_plan_claimed_by_one_worker_is_a_repeat_for_another(url):
    a = _ledger(url)
    b = Ledger.open(url, "s")
    first = a.study.ask()
    assert a.claim(first, PLANS[0], 10, ATTRS) == ("measure", None)
    second = b.study.ask()
    verdict, other = b.claim(second, PLANS[0], 10, ATTRS)
    assert verdict == "repeat" and other.number == first.number
    assert b.claim(b.study.ask(), PLANS[1], 10, ATTRS)[0] == "measure"


def test_the_budget_counts_claims_before_yours_and_not_cache_hits(url):
    a = _ledger(url)
    b = Ledger.open(url, "s")
    t1 = a.study.ask()
    assert a.claim(t1, PLANS[0], 2, ATTRS)[0] == "measure"
    _record(a, t1, PLANS[0], ok(1.5, cached=True))  # a cache hit: free
    t2 = b.study.ask()
    assert b.claim(t2, PLANS[1], 2, ATTRS)[0] == "measure"
    t3 = a.study.ask()
    assert a.claim(t3, PLANS[2], 2, ATTRS)[0] == "measure"  # t2 in flight counts: 1 of 2
    t4 = b.study.ask()
    assert b.claim(t4, Plan(quantization=Quantization()), 2, ATTRS)[0] == "over"
    b.skip(t4, "the budget was used by other workers")
    _record(b, t2, PLANS[1], Measurement.failed("refused"))  # failures count
    assert a.spent() == 2
    assert [t.number for t in a.trials()] == [t1.number, t2.number]  # t3 in flight, t4 skipped


def test_a_claim_waits_for_a_trial_asked_before_it_to_be_claimed(url):
    a = _ledger(url)
    b = Ledger.open(url, "s")
    early = a.study.ask()  # asked first, claimed later: it owns the plan
    late = b.study.ask()
    result = {}
    thread = threading.Thread(target=lambda: result.update(v=b.claim(late, PLANS[0], 10, ATTRS)))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for `early`
    assert a.claim(early, PLANS[0], 10, ATTRS)[0] == "measure"
    thread.join(10)
    assert result["v"][0] == "repeat" and result["v"][1].number == early.number


def test_a_trial_whose_worker_stops_beating_is_failed_with_the_reason(url):
    a = _ledger(url, heartbeat=1)
    t = a.study.ask()
    a.claim(t, PLANS[0], 10, ATTRS)  # ... and the worker dies: no more beats
    time.sleep(4.5)  # > 3 heartbeats
    b = Ledger.open(url, "s")
    [lost] = b.trials()
    assert lost.number == t.number and not lost.measurement.ok
    assert "stopped during the measurement" in lost.measurement.reason
    assert b.study.trials[t.number].state == optuna.trial.TrialState.FAIL
    assert b.spent() == 1  # a lost measurement still used the budget


def test_a_beating_worker_keeps_its_trial(url):
    a = _ledger(url, heartbeat=1)
    t = a.study.ask()
    a.claim(t, PLANS[0], 10, ATTRS)
    with a.heartbeat(t):
        time.sleep(4.5)
        assert Ledger.open(url, "s").trials() == []  # in flight, not failed
    _record(a, t, PLANS[0], ok(1.2))
    assert [x.measurement.speedup for x in a.trials()] == [1.2]


def test_errors_name_the_storage_without_its_password(url):
    from autotune.errors import UsageError

    assert mask("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    with pytest.raises(UsageError, match="no study `other`"):
        _ledger(url) and Ledger.open(url, "other")
    with pytest.raises(UsageError, match="already exists"):
        _ledger(url)
    with pytest.raises(UsageError, match=r"cannot open the storage postgresql://me:\*\*\*@"):
        Ledger.open("postgresql://me:secret@127.0.0.1:1/x", "s")
