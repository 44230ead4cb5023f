"""Trials, and the ledger that keeps them: an Optuna study in RDB storage.

A run's trials live in one Optuna study: SQLite at RUN_DIR/study.db by default (embedded,
nothing to start), or any database URL Optuna takes, such as PostgreSQL when workers on several
machines share a study. Every Optuna trial that is a measurement carries its Plan, Measurement,
strategy, seed and the machine that measured it as user attributes, so optuna-dashboard shows
them and every table is built from the same records. Optuna trials that are not measurements
(a sampler proposing a plan measured before, a proposal over the budget) carry `skipped` with
the reason, and are not Trials.

While a trial is measured its worker beats a heartbeat; a trial whose worker stopped beating
(killed, machine lost) is marked failed by the next worker that looks, and stays in the ledger
as a failed trial with that reason.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from autotune.errors import UsageError
from autotune.measure import Measurement
from autotune.plan import Plan

STUDY_FILE = "study.db"  # the default storage, inside RUN_DIR
# Trials here are asked and told by hand, each worker beating its own heartbeat (`heartbeat`);
# Optuna warns on every ask that heartbeats are meant for Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used",
                        category=UserWarning)


@dataclass(frozen=True)
class Trial:
    number: int  # the Optuna trial number
    plan: Plan
    measurement: Measurement
    strategy: str  # "baseline" for a machine's baseline
    seed: int
    score: float | None = None
    exportable: bool = False
    verdict: str = ""
    host: str = ""  # the machine that measured it

    @property
    def is_baseline(self) -> bool:
        return self.strategy == "baseline"

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "plan": self.plan.to_dict(), "plan_digest": self.plan.digest(),
                "plan_summary": self.plan.describe(), "measurement": self.measurement.to_dict(),
                "cached": self.measurement.cached, "strategy": self.strategy, "seed": self.seed,
                "score": self.score, "exportable": self.exportable, "verdict": self.verdict,
                "host": self.host}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        m = Measurement.from_dict({**d["measurement"], "cached": d.get("cached", False)})
        return cls(d["number"], Plan.from_dict(d["plan"]), m, d["strategy"], d["seed"],
                   d.get("score"), d.get("exportable", False), d.get("verdict", ""),
                   d.get("host", ""))


def mask(url: str) -> str:
    """A storage URL fit to print: the password left out."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return scheme + sep + rest


def _exists(url: str, name: str) -> UsageError:
    return UsageError(f"a study `{name}` already exists in {mask(url)}; join it with "
                      f"`autotune worker --storage URL --study {name}`, or give another "
                      f"--study name")


def worker_id() -> str:
    import platform

    return f"{platform.node()}:{os.getpid()}"


class Ledger:
    """The trials of one run, in one Optuna study. Safe to share between processes and machines:
    Optuna's storage hands out trial numbers atomically, and `claim` settles, through the
    records alone, which of two workers measures a plan and whether the budget still allows it."""

    SETTLE_SECONDS = 30.0  # how long a claim waits for earlier trials to be claimed

    def __init__(self, storage, name: str, heartbeat_seconds: int) -> None:
        import optuna

        self.storage = storage
        self.study = optuna.load_study(study_name=name, storage=storage)
        self.heartbeat_seconds = heartbeat_seconds

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _storage(url: str, heartbeat_seconds: int | None = None):
        import optuna

        from sqlalchemy.exc import IntegrityError

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created
        try:
            for attempt in range(3):
                try:
                    with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.9)
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        return optuna.storages.RDBStorage(
                            url, heartbeat_interval=heartbeat_seconds,
                            grace_period=3 * heartbeat_seconds if heartbeat_seconds else None)
                except IntegrityError:  # another process created the tables at the same moment
                    if attempt == 2:
                        raise
                    time.sleep(1.0)
        except ImportError as exc:  # the database's driver
            raise UsageError(f"cannot open {mask(url)}: {exc}; for PostgreSQL, "
                             f"pip install 'psycopg[binary]'") from None
        except Exception as exc:  # sqlalchemy: bad URL, server down, authentication
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot open the storage {mask(url)}: {first[:300]}") from None

    @classmethod
    def create(cls, url: str, name: str, info: dict[str, Any], directions: list[str],
               heartbeat_seconds: int = 10) -> Ledger:
        import optuna

        storage = cls._storage(url, heartbeat_seconds)
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            raise _exists(url, name) from None
        study.set_user_attr("run", {**info, "heartbeat_seconds": heartbeat_seconds})
        return cls(storage, name, heartbeat_seconds)

    @classmethod
    def check_new(cls, url: str, name: str) -> None:
        """Fails at once if the study exists (before anything is measured for a new one)."""
        import optuna

        if name in optuna.get_all_study_names(cls._storage(url)):
            raise _exists(url, name)

    @classmethod
    def open(cls, url: str, name: str) -> Ledger:
        import optuna

        storage = cls._storage(url)
        names = optuna.get_all_study_names(storage)
        if name not in names:
            known = f" It holds: {', '.join(names)}." if names else " It holds no studies."
            raise UsageError(f"no study `{name}` in {mask(url)}.{known} Start one with "
                             f"`autotune tune ... --storage URL --study NAME`")
        info = optuna.load_study(study_name=name, storage=storage).user_attrs.get("run")
        if info is None:
            raise UsageError(f"study `{name}` in {mask(url)} was not made by `autotune tune`")
        beat = int(info.get("heartbeat_seconds", 10))
        return cls(cls._storage(url, beat), name, beat)

    @property
    def info(self) -> dict[str, Any]:
        return self.study.user_attrs["run"]

    def load(self, sampler):
        """The same study, proposing with `sampler` (each Optuna strategy brings its own)."""
        import optuna

        return optuna.load_study(study_name=self.study.study_name, storage=self.storage,
                                 sampler=sampler)

    # -- writing ---------------------------------------------------------------------------

    def add_baseline(self, trial: Trial, value, params: dict[str, Any] | None = None,
                     distributions: dict | None = None) -> Trial:
        """Records a machine's baseline (measured before the trial exists: nothing to claim)."""
        import optuna

        attrs = self._attrs(trial)
        frozen = optuna.trial.create_trial(
            params=params or {}, distributions=distributions or {}, user_attrs=attrs,
            **({"values": list(value)} if isinstance(value, tuple) else {"value": value}))
        self.study.add_trial(frozen)
        number = max(t.number for t in self.study.get_trials(deepcopy=False)
                     if t.user_attrs.get("worker") == attrs["worker"]
                     and t.user_attrs.get("strategy") == "baseline")
        return Trial(**{**trial.__dict__, "number": number})

    def claim(self, otrial, plan: Plan, budget: int, attrs: dict[str, Any],
              timed: bool = True) -> tuple[str, Any]:
        """Settles whether this worker measures `plan` in the Optuna trial `otrial` (`timed`
        False: evaluates its accuracy alone, against the accuracy budget).

        Returns ("measure", None); ("repeat", FrozenTrial) when another trial holds the same
        plan, finished or claimed earlier (for a timing, a timing of it; for an accuracy
        evaluation, either); or ("over", None) when trials numbered before this one, claimed
        or not yet settled, already use the budget. Each worker decides from the records of
        the trials numbered before its own, so two workers never both measure one plan or
        both take the budget's last measurement."""
        digest = plan.digest()
        for key, value in {"plan": plan.to_dict(), "plan_summary": plan.describe(),
                           "plan_digest": digest, **attrs, "timed": timed,
                           "worker": worker_id()}.items():
            otrial.set_user_attr(key, value)
        otrial.set_user_attr("claimed", True)
        self._beat(otrial)
        waited = time.monotonic() + self.SETTLE_SECONDS
        while True:  # wait for the trials asked before this one to be claimed (or closed)
            earlier = [t for t in self.study.get_trials(deepcopy=False) if t.number < otrial.number]
            if not any(self._unsettled(t) for t in earlier) or time.monotonic() > waited:
                break  # what is still unsettled then was asked by a worker that died at once
            time.sleep(0.2)
        for t in earlier:
            if (t.user_attrs.get("plan_digest") == digest and self._holds_plan(t)
                    and (self._timed(t) or not timed)):
                return "repeat", t
        if sum(self._uses_budget(t, timed) for t in earlier) >= budget:
            return "over", None
        return "measure", None

    def record(self, otrial, trial: Trial, value) -> None:
        import optuna

        for key, v in self._attrs(trial).items():
            otrial.set_user_attr(key, v)
        if value is None:
            self.study.tell(otrial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(otrial, value)

    def skip(self, otrial, reason: str, value=None) -> None:
        """Closes an Optuna trial that is not a measurement: told `value` (a repeated plan's
        value, so the sampler learns it), or failed, which samplers ignore."""
        import optuna

        otrial.set_user_attr("skipped", reason)
        if value is None:
            self.study.tell(otrial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(otrial, value)

    def set_aside_in_flight(self, reason: str) -> int:
        """Closes every trial still open as not a measurement (`skipped`, with `reason`), so
        that its plan may be measured again; for a study nobody else works on, whose worker
        was killed. Returns how many."""
        import optuna

        open_ = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in open_:
            self.storage.set_trial_user_attr(t._trial_id, "skipped", reason)
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return len(open_)

    @contextmanager
    def heartbeat(self, otrial) -> Iterator[None]:
        """Beats for the Optuna trial while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                try:
                    self._beat(otrial)
                except Exception:  # a storage hiccup must not end the measurement
                    pass

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, otrial) -> None:
        if self.storage.heartbeat_interval:
            # Optuna beats only for study.optimize; with ask-and-tell the caller beats itself,
            # by the trial's storage id (no public accessor).
            self.storage.record_heartbeat(otrial._trial_id)

    # -- reading ---------------------------------------------------------------------------

    def fail_stale(self) -> None:
        """Marks failed the trials whose worker stopped beating its heartbeat."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def trials(self, worker: str | None = None) -> list[Trial]:
        """Every measurement of the study, baselines included, by number; a trial whose worker
        stopped mid-measurement is a failed Trial saying so. `worker`: only that worker's
        candidates."""
        self.fail_stale()
        return [t for f in self.study.get_trials(deepcopy=False) if (t := self.trial(f))
                and (worker is None or (f.user_attrs.get("worker") == worker
                                        and not t.is_baseline))]

    def spent(self, timed: bool = True) -> int:
        """Real timings (`timed` False: accuracy evaluations) made or under way: cache hits
        are free, failures count."""
        return sum(self._uses_budget(t, timed) for t in self.study.get_trials(deepcopy=False))

    def in_flight(self, exclude: str | None = None) -> list:
        """Trials being measured now (by other workers than `exclude`)."""
        import optuna

        return [t for t in self.study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("claimed") and t.user_attrs.get("worker") != exclude]

    def baseline(self, host: str | None = None) -> Trial:
        """This machine's baseline, else the first one recorded."""
        found = [t for t in self.trials() if t.is_baseline]
        if not found:
            raise UsageError("the study holds no baseline measurement yet")
        return next((t for t in found if t.host == host), found[0])

    def trial(self, f) -> Trial | None:
        """The Trial an Optuna trial records; None if it is not a measurement, or in flight."""
        import optuna

        a = f.user_attrs
        if "skipped" in a or "plan" not in a:
            return None
        if f.state == optuna.trial.TrialState.RUNNING:
            # Being measured, or recorded but not yet told (a worker killed between the two
            # leaves its measurement here): finished only once told, else set aside on resume.
            return None
        if "measurement" in a:
            return Trial.from_dict({**a, "number": f.number})
        reason = (f"the worker {a.get('worker', '?')} stopped during the measurement (killed, "
                  f"or its machine lost): no heartbeat for {3 * self.heartbeat_seconds} s"
                  if f.state == optuna.trial.TrialState.FAIL else f"ended {f.state.name.lower()}")
        return Trial(f.number, Plan.from_dict(a["plan"]), Measurement.failed(reason),
                     a.get("strategy", "?"), a.get("seed", 0), None, False, f"failed: {reason}",
                     a.get("host", ""))

    @staticmethod
    def _unsettled(t) -> bool:
        import optuna

        return t.state == optuna.trial.TrialState.RUNNING and not t.user_attrs.get("claimed") \
            and "skipped" not in t.user_attrs

    @staticmethod
    def _holds_plan(t) -> bool:
        """Measured, or being measured (a plan whose worker died may be measured again)."""
        import optuna

        a = t.user_attrs
        return a.get("claimed", False) and "skipped" not in a and a.get("strategy") != "baseline" \
            and (t.state == optuna.trial.TrialState.RUNNING or "measurement" in a)

    @staticmethod
    def _timed(t) -> bool:
        return t.user_attrs.get("timed", True)

    @classmethod
    def _uses_budget(cls, t, timed: bool = True) -> bool:
        a = t.user_attrs
        if "skipped" in a or a.get("strategy") == "baseline" or not a.get("claimed", False):
            return False
        # being measured, measured, failed or lost, of the kind asked
        return not a.get("cached", False) and cls._timed(t) == timed

    @staticmethod
    def _attrs(trial: Trial) -> dict[str, Any]:
        from autotune.measure import machine

        d = trial.to_dict()
        d.pop("number")
        return {**d, "worker": worker_id(), "machine": machine(), "recorded": time.time()}


class RunStore:
    """A run directory: run.json (what was asked, and where the study is) and pareto.json;
    the trials are in the study (RUN_DIR/study.db unless run.json names another storage)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def create(self, run_info: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))

    def exists(self) -> bool:
        return (self.dir / "run.json").is_file()

    def finished(self) -> bool:
        """Whether the run got as far as its export (RUN_DIR/best/report.json, written last)."""
        return (self.dir / "best" / "report.json").is_file()

    def run_info(self) -> dict[str, Any]:
        return json.loads((self.dir / "run.json").read_text())

    def storage_url(self, storage: str | None = None) -> str:
        return storage or f"sqlite:///{(self.dir / STUDY_FILE).resolve()}"

    def ledger(self) -> Ledger:
        info = self.run_info()
        if "study" not in info:
            raise UsageError(f"{self.dir} was written by an older onnx-autotune (trials.jsonl, no "
                             f"study); run `autotune tune` again")
        return Ledger.open(self.storage_url(info.get("storage")), info["study"])

    def trials(self) -> list[Trial]:
        return self.ledger().trials()

    def write_front(self, front: list[Trial], baseline: Trial) -> None:
        """pareto.json: the trials no other beats in speedup, peak memory and accuracy at once."""
        from autotune.pareto import point

        rows = [{"number": t.number, "plan_summary": t.plan.describe(), "speedup": p[0],
                 "memory_reduction": p[1], "accuracy_drop": -p[2], "host": t.host}
                for t in front if (p := point(t, baseline)) is not None]
        tmp = self.dir / "pareto.json.tmp"
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        tmp.replace(self.dir / "pareto.json")
