"""The `autotune` command line. Bad input: one line naming the problem and the fix, exit 2."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from autotune import metrics
from autotune.errors import AutotuneError

EPILOG = "Docs and examples: README.md. Every command exits 2 on bad input, with one line saying why."


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (it prints the usage first), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="autotune", epilog=EPILOG,
                                description="Measured auto-tuning of ONNX models for ONNX Runtime.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    zoo = sub.add_parser("zoo", help="models built in code and trained on digits")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zsub.add_parser("list", help="list the zoo's models")
    ze = zsub.add_parser("export", help="write a zoo model to an .onnx file (trains it once)")
    ze.add_argument("name")
    ze.add_argument("-o", "--out", "--output", dest="output", required=True, type=Path,
                    metavar="FILE.onnx")
    ze.add_argument("--force", action="store_true", help="replace FILE.onnx if it exists")

    t = sub.add_parser("tune", help="search for a faster configuration and export it",
                       description="Measures the ORT_ENABLE_ALL baseline, searches the space within "
                                   "the budget, and writes RUN_DIR/best/, the tuned-model directory.")
    t.add_argument("model", nargs="?", help="an .onnx file or zoo:NAME (or give --workload)")
    _workload_args(t)
    t.add_argument("--search-space", default="runtime", help="a name in search_spaces/ or a YAML "
                   "path (default: runtime)")
    t.add_argument("--strategy", default="random",
                   help="random, tpe, cmaes, gp, qmc, nsga2 (Optuna's samplers), greedy "
                        "(per-site, bottom-up), topdown (per-region INT8 from whole-model INT8 "
                        "down), presets (ORT's levels, whole-model INT8) or ppo (MaskablePPO "
                        "learning on the Gymnasium environment) (default: random)")
    t.add_argument("--policy", type=Path, default=None, metavar="POLICY.zip",
                   help="with --strategy ppo: start from a policy trained before")
    t.add_argument("--budget", type=int, default=12,
                   help="real measurements beyond the baseline; cache hits are free (default: 12)")
    t.add_argument("--accuracy-budget", type=int, default=None,
                   help="accuracy evaluations (built and scored, not timed) a strategy may use "
                        "to screen plans; only topdown asks for them (default: 100)")
    t.add_argument("--max-accuracy-drop", type=float, default=0.01,
                   help="top-1 loss (fraction) or fidelity output error allowed (default: 0.01)")
    t.add_argument("--objective", default="latency", choices=["latency", "memory", "pareto"],
                   help="what to improve; pareto: speedup, peak memory and accuracy together "
                        "(the run keeps their Pareto front) (default: latency)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--out", required=True, type=Path, metavar="RUN_DIR")
    t.add_argument("--timeout", type=float, default=900,
                   help="seconds allowed to build, and to measure, one candidate (default: 900)")
    t.add_argument("--no-cache", action="store_true", help="measure everything anew")
    t.add_argument("--storage", default=None, metavar="URL",
                   help="the Optuna storage for the run's study: a database URL such as "
                        "postgresql://user:password@host/db, which `autotune worker` processes on "
                        "other machines can join (default: sqlite in RUN_DIR/study.db)")
    t.add_argument("--study", default=None, metavar="NAME",
                   help="the study's name in --storage (default: RUN_DIR's name)")
    t.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS",
                   help="how often a worker says it is alive while measuring; a trial whose "
                        "worker is silent for 3x this is marked failed (default: 10)")
    t.add_argument("-q", "--quiet", action="store_true")

    wk = sub.add_parser("worker", help="join a study shared through --storage and measure on "
                                       "this machine until its budget is used",
                        description="Takes the workload, search space, strategy, budget and "
                                    "measurement protocol from the study; run one per machine.")
    wk.add_argument("--storage", required=True, metavar="URL", help="the study's database URL")
    wk.add_argument("--study", required=True, metavar="NAME")
    wk.add_argument("--no-cache", action="store_true", help="measure everything anew")
    wk.add_argument("-q", "--quiet", action="store_true")

    st = sub.add_parser("sites", help="list every place in the model where a choice can be made")
    st.add_argument("model", nargs="?", help="an .onnx file or zoo:NAME (or give --workload)")
    _workload_args(st)
    st.add_argument("--search-space", default=None, help="only the site rules this space enables")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("export", help="write a tuned-model directory for one trial of a run",
                       description="Rebuilds a point of the run's Pareto front (or any trial) "
                                   "from the original model and writes its tuned-model directory.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--pick", default=None, help="fastest, smallest, most-accurate (points of "
                   "the front within the accuracy limit) or a trial number (default: as the "
                   "run's objective: fastest, or smallest for --objective memory)")
    e.add_argument("-o", "--out", type=Path, default=None,
                   help="where to write it (default: RUN_DIR/pick-<PICK>); it must not exist")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")

    r = sub.add_parser("replay", help="rebuild the plan of a saved environment state or of a "
                                      "report's trial, and re-measure it",
                       description="Rebuilds the Plan from an environment state's workload, "
                                   "search space and actions (autotune.env.save_state writes "
                                   "one), or from a trial file of a report (results/NAME/replay/).")
    r.add_argument("state", type=Path, metavar="STATE.json")
    r.add_argument("-o", "--out", type=Path, default=None,
                   help="write the candidate there: model.onnx, session.json, plan.json")
    r.add_argument("--force", action="store_true", help="replace --out if it exists")
    r.add_argument("--validate", action="store_true",
                   help="measure it again (uncached) and say whether the state's reward (a "
                        "trial's speedup) lies within the new 95%% CI; exit 1 if not")

    ex = sub.add_parser("experiment", help="run a grid of workloads x strategies x seeds")
    exsub = ex.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    er = exsub.add_parser("run", help="run (or resume) an experiment spec, cell by cell",
                          description="Runs every cell of experiments/NAME.yaml not finished "
                                      "yet, one `tune` run each, into --out; run it again "
                                      "after a stop and it resumes where it was.")
    er.add_argument("spec", type=Path, metavar="SPEC.yaml")
    er.add_argument("-o", "--out", type=Path, default=None,
                    help="the experiment directory (default: runs/<name>)")
    er.add_argument("--dry-run", action="store_true",
                    help="list the cells, what is done, and the time the rest should take")
    er.add_argument("-q", "--quiet", action="store_true")

    rp = sub.add_parser("report", help="tables, plots and a trial CSV of an experiment or run",
                        description="Writes trials.csv, table.md, table.tex, provenance.md, "
                                    "replay/*.json and the plots; given a report directory or "
                                    "its trials.csv, rebuilds the rest from the CSV alone.")
    rp.add_argument("source", type=Path, metavar="DIR",
                    help="an experiment directory, a run directory, or a report's directory or "
                         "trials.csv")
    rp.add_argument("-o", "--out", type=Path, default=None,
                    help="where to write (default: results/<name>, or the report's own "
                         "directory)")
    rp.add_argument("--no-plots", action="store_true", help="tables and CSV only")

    ag = sub.add_parser("agent", help="train an RL tuning policy over several models")
    agsub = ag.add_subparsers(dest="agent_command", required=True)
    at = agsub.add_parser(
        "train", help="train one MaskablePPO policy over several models, on estimates",
        description="Trains one policy over the given models on estimated measurements (the "
                    "cost model for latency, each site's accuracy cost measured once alone), "
                    "then apply it to a new model with `autotune tune --strategy ppo --policy "
                    "POLICY.zip`, which refines it with real measurements.")
    at.add_argument("--workloads", nargs="+", required=True, metavar="W",
                    help="workload specs (envs/*.yaml), .onnx files or zoo:NAME")
    at.add_argument("-o", "--out", required=True, type=Path, metavar="POLICY.zip")
    at.add_argument("--force", action="store_true", help="replace POLICY.zip if it exists")
    at.add_argument("--search-space", default="cpu-int8",
                    help="a name in search_spaces/ or a YAML path (default: cpu-int8)")
    at.add_argument("--steps", type=int, default=30_000,
                    help="environment steps over all models (default: 30000)")
    at.add_argument("--max-accuracy-drop", type=float, default=0.01,
                    help="top-1 loss (fraction) or fidelity output error allowed (default: 0.01)")
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                    help="write TensorBoard logs there (tensorboard --logdir DIR)")
    at.add_argument("-q", "--quiet", action="store_true")

    v = sub.add_parser("verify", help="re-measure a tuned-model directory against the baseline")
    v.add_argument("directory", type=Path)
    _workload_args(v, model=False)
    for verb in (v, r):  # they measure too
        verb.add_argument("--timeout", type=float, default=900,
                          help="seconds allowed to build, and to measure, one candidate "
                               "(default: 900)")
    return p


def _workload_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    p.add_argument("--workload", type=Path, metavar="W.yaml", help="a workload spec (see envs/)")
    if model:
        p.add_argument("--shape", action="append", default=[], metavar="NAME=1x3x224x224",
                       help="bind an input's shape, or a dynamic dimension: DIM=N (repeatable)")
        p.add_argument("--metric", choices=["auto", *metrics.BUILTIN], default=None,
                       help="a built-in metric (default: the workload's, else top1 with labels "
                            "and fidelity without); a function of your own is named in a "
                            "workload file")


def _zoo(args) -> int:
    from autotune import zoo

    if args.zoo_command == "list":
        for m in zoo.MODELS.values():
            info = zoo.info(m.name)
            state = f"top-1 {info['top1']:.4f}" if info else "not trained yet"
            print(f"{m.name:20s} {'x'.join(map(str, m.input_shape()[1:])):>10s}  {state:16s} {m.description}")
        from autotune.zoo import wheels

        for w in wheels.MODELS.values():
            print(f"wheel:{w.name:14s} {'from ' + w.distribution:>27s}  {w.description}")
        return 0
    _new_output(args.output, args.force)
    out = zoo.export(args.name, args.output)
    print(f"wrote {out} (held-out top-1 {zoo.info(args.name)['top1']:.4f})")
    return 0


def _tune(args) -> int:
    from autotune import space as spaces
    from autotune import workload as workloads
    from autotune.objective import Objective
    from autotune.tune import default_cache, tune

    if args.model is None and args.workload is None:
        raise AutotuneError("give a model (an .onnx file or zoo:NAME) or --workload W.yaml")
    objective = Objective(args.objective, args.max_accuracy_drop)
    space = spaces.load(args.search_space)
    w = workloads.load(args.model, workload=args.workload, shapes=args.shape, metric=args.metric)
    protocol = _protocol(args)
    result = tune(w, space, strategy=args.strategy, budget=args.budget,
                  **({} if args.accuracy_budget is None else
                     {"accuracy_budget": args.accuracy_budget}), objective=objective,
                  seed=args.seed, out=args.out, protocol=protocol,
                  cache=None if args.no_cache else default_cache(), command=sys.argv,
                  quiet=args.quiet, storage=args.storage, study=args.study,
                  heartbeat_seconds=args.heartbeat, policy=args.policy)
    best = result.best
    timed = sum(t.measurement.timed for t in result.trials)
    failed = sum(not t.measurement.ok and t.measurement.timed for t in result.trials)
    screened = (f"; {len(result.trials) - timed} accuracy evaluations "
                f"({result.accuracy_evaluations} new)" if timed < len(result.trials) else "")
    print(f"{timed} candidates timed ({result.measurements_used} measured, "
          f"{timed - result.measurements_used} cached, {failed} failed){screened}")
    base = result.baseline.measurement
    if base.ok and w.metric.name != "fidelity" and base.accuracy is not None:
        tuned = best.measurement.accuracy if best is not None else base.accuracy
        print(f"{metrics.label(w.metric.name)} on {w.data.evaluation} evaluation samples: "
              f"{tuned:.4f} (ORT_ENABLE_ALL: {base.accuracy:.4f})")
    if best is None:
        print(f"no candidate beat ORT_ENABLE_ALL within the accuracy limit; the baseline "
              f"configuration is in {result.run_dir / 'best'}")
    else:
        m = best.measurement
        print(f"best: {best.plan.describe()}\n  {m.speedup:.2f}x faster than ORT_ENABLE_ALL "
              f"(95% CI {m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f}); {best.verdict}\n"
              f"  tuned model: {result.run_dir / 'best'}")
    return 0


def _worker(args) -> int:
    from autotune.tune import default_cache, join

    mine = join(args.storage, args.study, cache=None if args.no_cache else default_cache(),
                quiet=args.quiet)
    failed = sum(not t.measurement.ok for t in mine)
    print(f"this machine measured {len(mine)} trial(s) ({failed} failed); the study's budget is "
          f"used. Export with `autotune export RUN_DIR` where it was started")
    return 0


def _sites(args) -> int:
    import json

    from autotune import space as spaces
    from autotune import workload as workloads
    from autotune.tune import sites_of

    if args.model is None and args.workload is None:
        raise AutotuneError("give a model (an .onnx file or zoo:NAME) or --workload W.yaml")
    w = workloads.load(args.model, workload=args.workload, shapes=args.shape, metric=args.metric)
    found = sites_of(w)
    space = spaces.load(args.search_space) if args.search_space else None
    if space is not None:
        rules = dict(space.site_rules)
        found = [s for s in found if s.rule in rules]
    if args.json:
        print(json.dumps([{"id": s.id, "kind": s.kind, "rule": s.rule, "options": list(s.options),
                           "lossy": s.lossy, "nodes": list(s.nodes), "features": s.features}
                          for s in found], indent=1))
        return 0
    counts = {k: sum(s.kind == k for s in found) for k in ("fusion", "grouping", "layout", "precision")}
    print(f"{len(found)} sites: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if space is not None:
        _print_providers(args.search_space)
        for note in space.notes:
            if not note.startswith("execution provider"):
                print(f"note      {note}")
    for c in space.choices if space is not None else ():
        options = "/".join(",".join(o) or "none" if isinstance(o, tuple) else str(o).lower()
                           for o in c.options)
        print(f"global  {c.key}: {options}")
    rows = [(s.id, s.kind, "/".join(s.options), "lossy" if s.lossy else "lossless",
             _clip("+".join(s.features["op_types"]), 28), f"{s.features['nodes']} nodes",
             f"{s.features['flops'] / 1e6:.1f} MFLOP", f"at {s.features['position']:.2f}",
             "for GPU providers" if s.features.get("provider") == "gpu" else "") for s in found]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(9)]
    right = {5, 6}  # numbers
    for r in rows:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


def _print_providers(space_name: str) -> None:
    """The execution providers the space asks for: found (with what), or why not."""
    from autotune import providers
    from autotune import space as spaces

    asked = next((c.options for c in spaces.load(space_name, machine=False).choices
                  if c.key == "execution_provider"), ())
    found = providers.available()
    for name in asked:
        a = found[name]
        print(f"provider  {name}: {'found, ' if a.ok else ''}{a.how}")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _export(args) -> int:
    from autotune import export, pareto
    from autotune import workload as workloads
    from autotune.measure import Measurer
    from autotune.objective import Objective
    from autotune.store import RunStore

    store = RunStore(args.run_dir)
    if not store.exists():
        raise AutotuneError(f"{args.run_dir} is not a run directory (no run.json); give the "
                            f"--out directory of `autotune tune`")
    info = store.run_info()
    objective = Objective(**info["objective"])
    ledger = store.ledger()
    baseline = ledger.baseline(platform.node())
    trials = [t for t in ledger.trials() if not t.is_baseline]
    which = args.pick or ("smallest" if objective.target == "memory" else "fastest")
    chosen = pareto.pick(trials, baseline, which, objective)
    w = workloads.from_spec(info["workload"])
    dest = args.out or args.run_dir / f"pick-{which}"
    _new_output(dest, args.force)
    claim = {"fastest": "faster", "smallest": "smaller"}.get(which, "as-measured")
    export.write(dest, w, Measurer(w), baseline, None if chosen.is_baseline else chosen, objective,
                 claim)
    print(f"trial {chosen.number}: {chosen.plan.describe()}\n  {dest}")
    return 0


def _replay(args) -> int:
    import json
    from dataclasses import replace

    from autotune.env import replay
    from autotune.measure import Measurer
    from autotune.plan import Plan

    try:
        state = json.loads(args.state.read_text())
    except (OSError, ValueError) as exc:
        raise AutotuneError(f"cannot read {args.state}: {exc}") from None
    if isinstance(state, dict) and "plan" in state and "actions" not in state:
        return _replay_trial(args, state)
    w, plan, reward = replay(state)
    print(f"plan: {plan.describe()}")
    measurer = Measurer(w, _protocol(args))
    if args.out is not None:
        _new_output(args.out, args.force)
        _write_candidate(measurer, plan, args.out)
        print(f"candidate: {args.out}")
    if not args.validate:
        return 0
    reward.reset(measurer.measure(Plan()))
    m = measurer.measure(plan)
    now = reward.update(m)
    if not m.ok:
        print(f"does not hold: the candidate failed now ({m.reason})")
        return 1
    lo, hi = sorted(reward.update(replace(m, speedup=x)) for x in m.speedup_ci)
    was = state.get("reward")
    said = f"reward now {now:.4f} (95% CI {lo:.4f} to {hi:.4f}), the state's {was}"
    if was is not None and lo - 1e-9 <= was <= hi + 1e-9:
        print(f"holds: {said}")
        return 0
    print(f"does not hold: {said}")
    return 1


def _new_output(path: Path, force: bool) -> None:
    """A command writes over nothing it did not create: an output that exists is refused,
    unless --force."""
    if path.exists() and not force:
        raise AutotuneError(f"{path} already exists; choose another --out, or add --force to "
                            f"replace it")


def _write_candidate(measurer, plan, out: Path) -> None:
    """The candidate a plan builds: model.onnx, session.json, plan.json in `out`."""
    import json
    import shutil
    import tempfile

    from autotune.measure import Measurement

    with tempfile.TemporaryDirectory(prefix="autotune-replay-") as tmp:
        built = measurer.build(plan, Path(tmp))
        if isinstance(built, Measurement):
            raise AutotuneError(f"the plan does not build: {built.reason}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built.model, out / "model.onnx")
    (out / "session.json").write_text(json.dumps(built.settings, indent=2) + "\n")
    (out / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")


def _replay_trial(args, trial: dict) -> int:
    """`autotune replay` of a report's trial file: rebuild the plan, and measure it again."""
    from autotune import workload as workloads
    from autotune.measure import Measurer
    from autotune.plan import InvalidPlan, Plan

    missing = [k for k in ("workload", "plan", "measured") if k not in trial]
    if missing:
        raise AutotuneError(f"{args.state}: not a report's trial file (no `{missing[0]}`)")
    w = workloads.from_spec(trial["workload"], trial.get("workload_digest"))
    try:
        plan = Plan.from_dict(trial["plan"])
    except (InvalidPlan, TypeError, ValueError) as exc:
        raise AutotuneError(f"{args.state}: its plan is not valid: {exc}") from None
    src = trial.get("source", {})
    print(f"plan: {plan.describe()}\n  from {src.get('experiment')} {src.get('cell')} "
          f"trial {src.get('trial')}, measured on {src.get('cpu')}")
    measurer = Measurer(w, _protocol(args))
    if args.out is not None:
        _new_output(args.out, args.force)
        _write_candidate(measurer, plan, args.out)
        print(f"candidate: {args.out}")
    if not args.validate:
        return 0
    m = measurer.measure(plan)
    was = trial["measured"]["speedup"]
    if not m.ok:
        print(f"does not hold: the candidate failed now ({m.reason})")
        return 1
    lo, hi = m.speedup_ci
    said = (f"speedup now {m.speedup:.3f} (95% CI {lo:.3f} to {hi:.3f}), the trial's "
            f"{was:.3f}")
    if lo - 1e-9 <= was <= hi + 1e-9:
        print(f"holds: {said}")
        return 0
    print(f"does not hold: {said}")
    return 1


def _experiment(args) -> int:
    from autotune import experiment

    spec = experiment.load(args.spec)
    out = args.out or Path("runs") / spec.name
    if args.dry_run:
        print("\n".join(experiment.plan_lines(spec, out)))
        return 0
    ran = experiment.run(spec, out, quiet=args.quiet)
    print(f"{spec.name}: {len(experiment.cells(spec))} cells done ({len(ran)} run now) in "
          f"{out}; tables: autotune report {out}")
    return 0


def _report(args) -> int:
    from autotune.report import report

    out = report(args.source, args.out, plot=not args.no_plots)
    print(f"wrote {out}: trials.csv, table.md, table.tex, provenance.md, replay/"
          + ("" if args.no_plots else ", best-so-far.png/.svg, pareto.png/.svg"))
    return 0


def _agent(args) -> int:
    from autotune import space as spaces
    from autotune.agents import train
    from autotune.experiment import load_workload
    from autotune.tune import default_cache

    if args.steps < 1:
        raise AutotuneError(f"--steps must be at least 1, got {args.steps}")
    _new_output(args.out, args.force)
    if args.tensorboard is not None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise AutotuneError("--tensorboard needs the tensorboard package: "
                                "pip install tensorboard") from None
    space = spaces.load(args.search_space)
    loaded = [load_workload(w) for w in args.workloads]
    plans = train(loaded, space, args.out, steps=args.steps, seed=args.seed,
                  max_accuracy_drop=args.max_accuracy_drop, tensorboard=args.tensorboard,
                  cache=default_cache(), quiet=args.quiet)
    print(f"wrote {args.out}; the trained policy's own plans (estimated):")
    for p in plans:
        print(f"  {p['workload']}: {p['estimated_speedup']:.2f}x, accuracy drop "
              f"{p['estimated_accuracy_drop']:.4f}: {p['plan']}")
    print(f"apply it: autotune tune MODEL --strategy ppo --policy {args.out} "
          f"--search-space {args.search_space}")
    return 0


def _protocol(args):
    from autotune.measure import Protocol

    if args.timeout <= 0:
        raise AutotuneError(f"--timeout must be positive, got {args.timeout}")
    return Protocol(build_timeout=args.timeout, measure_timeout=args.timeout)


def _verify(args) -> int:
    from autotune import export
    from autotune import workload as workloads

    w = workloads.load(workload=args.workload) if args.workload else None
    passed, message = export.verify(args.directory, w, _protocol(args))
    print(message)
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"zoo": _zoo, "tune": _tune, "worker": _worker, "sites": _sites,
                "export": _export, "replay": _replay, "agent": _agent,
                "verify": _verify, "experiment": _experiment, "report": _report}[args.command](args)
    except AutotuneError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from autotune.tune import stopped

        again = (f"; run the same command again to resume the run in {args.out}"
                 if args.command == "tune" and stopped(args.out) else "")
        print(f"autotune: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autotune sites ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
