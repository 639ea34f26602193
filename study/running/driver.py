"""The study driver: plan → COCO weights → pretraining (Ray tasks) → trials (Ray Tune) → outputs.

The steps live in study/space/plan.py, study/artifacts/jobs.py and study/artifacts/coco_weights.py
(the plan, complete before Ray starts and saved once), study/running/prepare.py (dry run, data
check), study/running/pipeline.py (Ray and Tune), study/running/trial.py (one trial) and
study/outputs/__init__.py (the end of a study).

``run_study(StudyArgs(...))`` is what ``study/run.py`` calls; tests call it in-process with a fake
training function (``train_fn=``) and a Ray session they started themselves.

Study folder (``--out``, default ``studies/<space>-<timestamp>``)::

    plan.json            every planned trial's config, the pretraining jobs, skips (resume reads it)
    pretraining.json     what the pretraining jobs produced (study/artifacts/jobs.py)
    space.yaml           the space file as it was
    pretrain_cache/      center_loss / ssl backbones (default cache; see study/artifacts/cache.py)
    trials/<id>/         trial.json, history.jsonl, attempts.jsonl, done.json (running/trial.py)
    tune/                Ray Tune's experiment (checkpoints, state for --resume)
    optuna.sqlite        the Optuna study of a sampled space
    status.json          how Tune ended each trial
    study.json           the study's id: --resume loads only studies this user created
                         (study/running/trust.py)
    driver.json          the running driver and its Ray processes (study/running/session.py)
    data_report.txt/.json  the data check of every dataset the trials use
    results.csv, report.md, *.png, best_config.yaml

Nothing is overwritten: a new study refuses a folder that holds a study (continue it with
``--resume``) or anything else (unless ``--force``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from model.config import DEVICES, parse_override
from study import cli
from study.artifacts import coco_weights as coco
from study.artifacts import jobs as pretraining
from study.cli.args import StudyArgs
from study.files import atomic_write_text
from study.layout import FINISHED, PLAN, SPACE, TUNE, StudyError, valid_metric
from study.outputs import StudyOutcome, finish, report_axes
from study.outputs.optuna_best import history_lines
from study.outputs.results import collect_rows
from study.running import feed, nodes, pipeline, prepare, session, tracking, trust
from study.running.storage import Storage, storage_of
from study.running.trial import TrainFn
from study.space import racing
from study.space.definition import load_space, nonneg_int
from study.space.plan import Plan, build_plan, describe_profile
from study.space.racing import parse_seeds

Log = Callable[[str], None]


def import_train_fn(spec: str) -> TrainFn:
    """``module:function`` (an importable module) or ``path/to/file.py:function`` → the function
    (the training function is pluggable: tests, benchmarks, a user's own trainer). A file is
    loaded from its path: ``python study/run.py`` puts study/ on sys.path, not the current
    folder, and nothing here adds it."""
    module, _, name = spec.rpartition(":")
    if not module or not name:
        raise StudyError(f"--train-fn must be MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    try:
        return getattr(_load_module(module), name)
    except (ImportError, AttributeError) as e:
        raise StudyError(f"--train-fn {spec}: cannot import it ({e})") from e


def _load_module(module: str) -> ModuleType:
    if not module.endswith(".py"):
        return importlib.import_module(module)
    path = Path(module).expanduser().resolve()
    name = f"train_fn_{path.stem}"
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None or not path.is_file():
        raise ImportError(f"no Python file {path}")
    loaded = importlib.util.module_from_spec(found)
    sys.modules[name] = loaded  # ship_by_value pickles it by value from there
    found.loader.exec_module(loaded)
    return loaded


def ship_by_value(fn: TrainFn) -> None:
    """Ray workers import pickled functions by module name; a training function from outside
    the installed packages (a script, a test helper) travels by value instead."""
    module = getattr(fn, "__module__", "") or ""
    if module.split(".")[0] in ("model", "study") or module not in sys.modules:
        return
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module])


def study_dir_for(args: StudyArgs, space_name: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.name:
        return Path("studies") / args.name
    if args.resume:  # the latest study of this space
        found = sorted(Path("studies").glob(f"{space_name}-*"), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if (p / PLAN).is_file()]
        if not found:
            raise StudyError(f"--resume: no studies/{space_name}-* folder to resume; pass --out")
        return found[-1]
    return Path("studies") / f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_plan(args: StudyArgs) -> Plan:
    space = load_space(args.space)
    overrides = dict(parse_override(o) for o in args.overrides)
    data = str(Path(args.data).expanduser().resolve()) if args.data else None
    if data is not None and not Path(data).exists():
        raise StudyError(f"--data {args.data}: no such file or folder")
    cuda = quick_on_cuda(args.device) if data is None else False
    if data is not None and args.device != "auto":
        overrides.setdefault("device", args.device)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    return build_plan(
        space, data=data, overrides=overrides, seeds=seeds, full=args.full, cuda=cuda,
        budget=args.budget,
    )


def quick_on_cuda(device: str) -> bool:
    """The quick profile's device: ``auto`` = CUDA when this machine has it."""
    if device not in DEVICES:
        raise StudyError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device != "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise StudyError("--device cuda: torch sees no CUDA device here; drop it or "
                                 "use --device cpu")
        return device == "cuda"
    import torch

    return torch.cuda.is_available()


def check_out_free(study_dir: Path, force: bool) -> None:
    """A new study writes results.csv, report.md, best_config.yaml …: never over a user's files."""
    if force or not study_dir.exists():
        return
    if not study_dir.is_dir():
        raise StudyError(f"{study_dir} is a file, not a folder; pick another --out")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in study_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise StudyError(
            f"{study_dir} is not empty ({shown}) and holds no study (no plan.json): a study "
            "writes results.csv, report.md, best_config.yaml and more there, replacing files of "
            "those names. Pick a new or empty --out, or pass --force to write into it anyway"
        )


def run_study(
    args: StudyArgs, *, train_fn: TrainFn | None = None, log: Log = print
) -> StudyOutcome:
    """Run (or with ``args.dry_run`` only print) a study; see the module docstring."""
    t0 = time.time()
    if args.max_failures is not None:  # checked as the space's own max_failures
        nonneg_int(args.max_failures, "max_failures", "--max-failures")
    if args.resume:
        study_dir = study_dir_for(args, Path(args.space).stem)
        if not (study_dir / PLAN).is_file() and args.storage is not None:
            # a new machine, or the folder was lost: the study comes back from its storage
            storage_of(study_dir, args.storage).pull_study()
            log(f"study folder {study_dir} rebuilt from the storage {args.storage}")
        if not (study_dir / PLAN).is_file():
            raise StudyError(
                f"--resume: {study_dir} has no plan.json; nothing to resume (a study kept in "
                "cloud storage resumes with --storage URI as well)"
            )
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        if (args.overrides or args.data or seeds not in (None, 1) or args.full
                or args.budget is not None):
            raise StudyError(
                "--resume keeps the study's own plan; drop --set/--data/--seeds/--budget/--full"
            )
        if not args.dry_run:  # a dry run reads plan.json only (JSON), never Tune's pickles
            trust.check_resumable(study_dir, storage_of(study_dir, args.storage))
        plan = pretraining.load_study_plan(study_dir)
        log(f"resuming study {study_dir} ({plan.space.name})")
    else:
        plan = make_plan(args)
        study_dir = study_dir_for(args, plan.space.name)
        if (study_dir / PLAN).exists() and not args.dry_run:
            raise StudyError(
                f"{study_dir} already holds a study; continue it with --resume --out {study_dir}, "
                "or pick another --out"
            )
        if not args.dry_run:
            check_out_free(study_dir, args.force)
    cache_root = (Path(args.cache) if args.cache else study_dir / "pretrain_cache").resolve()
    log(describe_profile(plan))
    for note in plan.notes:
        log(note)
    if not args.resume:
        plan, needs = complete_plan(plan, args, cache_root, log)
        if args.dry_run:
            prepare.print_dry_run(plan, needs)
            return _dry_run_outcome(plan, study_dir, "", needs, log)
    elif args.dry_run:
        prepare.print_dry_run(plan, {})
        return _dry_run_outcome(plan, study_dir, " (the saved plan)", {}, log)

    fn = train_fn or import_train_fn(args.train_fn)
    args = where_to_look(args, plan, study_dir, log)
    if args.resume:
        session.stop_stale(study_dir, log)
    data = prepare.check_data(plan, strict=args.strict, log=log)
    feed_trials(plan, data, args, log)
    ship_by_value(fn)
    storage = storage_of(study_dir, args.storage)
    with trust.private_umask():
        plan = _run(plan, study_dir, cache_root, fn, data, args, log, t0, storage)
    storage.pull_study()  # (every trial's last records, before the outputs are written)
    outcome = finish(plan, study_dir, time.time() - t0, log)
    storage.push_outputs()
    return outcome


def where_to_look(args: StudyArgs, plan: Plan, study_dir: Path, log: Log) -> StudyArgs:
    """(issue 27) Where a person watches the study, said before it starts: the trackers
    (``--track``, checked here) and a sampled study's Optuna history with the
    ``optuna-dashboard`` command that opens it."""
    args = tracking.start(args, study_dir, log)
    if plan.space.sampled:
        log(history_lines(study_dir)[0].replace("`", ""))
    return args


def feed_trials(
    plan: Plan, data: list[prepare.DataSource], args: StudyArgs, log: Log
) -> None:
    """The node's frame cache, built once before the trials, and the loader cores a trial needs
    against the CPUs it gets (study/running/feed.py)."""
    cfgs = [t.config for t in plan.runnable()] or [plan.base]
    feed.plan_frame_cache(cfgs, log)
    cuda = plan.cuda or any(
        c.device == "cuda" or (c.device == "auto" and quick_on_cuda("auto")) for c in cfgs
    )
    side = max((s.split.get("frame_side", 0) for s in data), default=0) or 1920
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else plan.resources.cpus
    log(feed.cpu_request_line(cfgs, cpus, cuda=cuda, frame_side=side))


def complete_plan(
    plan: Plan, args: StudyArgs, cache_root: Path, log: Log
) -> tuple[Plan, dict[str, bool]]:
    """The trials' plan with its pretraining jobs and the skips of the COCO-weights check;
    also trial id → its COCO weights are not on disk (the dry run's ``needs_download``)."""
    jobs, notes = pretraining.plan_jobs(plan, cache_root, log)
    plan = dataclasses.replace(plan, pretrain_jobs=jobs, notes=[*plan.notes, *notes])
    check = coco.check_study(
        plan,
        cache_root=cache_root,
        download=args.download,
        skip_unavailable=args.skip_unavailable,
        probe_only=args.dry_run,
        log=log,
    )
    return pretraining.with_skips(plan, check.skips), check.needs


def _run(
    plan: Plan,
    study_dir: Path,
    cache_root: Path,
    fn: TrainFn,
    data: list[prepare.DataSource],
    args: StudyArgs,
    log: Log,
    t0: float,
    storage: Storage,
) -> Plan:
    """Ray up, the study folder, pretraining, the trials; Ray down and the folder's record
    cleaned whatever happens. Returns the plan with what the pretraining produced. ``t0``: when
    the study began (a wall-time budget counts from it)."""
    cluster = pipeline.start_ray(args.address, args.dashboard_host, log)
    try:  # the folder appears once Ray is up: a failed start leaves nothing to --resume
        study_dir.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_text(study_dir / SPACE, plan.space.text)
            trust.write_manifest(study_dir, storage)  # (bound to its place and storage)
        storage.save_uri()
        session.record(study_dir, pipeline.owns_ray())
        prepare.write_data_reports(study_dir, data, log)
        if not args.resume:
            plan.save(study_dir / PLAN)  # once: what the pretraining adds is pretraining.json
        storage.push_driver_files()
        nodes.check_nodes([s.split["data_arg"] for s in data], storage, log)
        res = pipeline.effective_resources(
            plan, args.cpus_per_trial, args.gpus_per_trial, cluster, log
        )
        pipeline.check_fits_a_node(res, pipeline.node_gpus())
        done = pretraining.run_jobs(plan, study_dir, cache_root, res, log, storage)
        plan = pretraining.applied(plan, done)
        storage.push_driver_files()
        session.record(study_dir, pipeline.owns_ray())  # Ray's agents are up by now
        rounds = Rounds(plan, study_dir, cache_root, res, fn, args, log, cluster, t0, storage)
        plan = rounds.run()
        trust.record_phase(study_dir, storage)  # the study's end: every experiment's state
    finally:
        pipeline.stop_ray()
        session.clear(study_dir)
        trust.harden(study_dir)
    return plan


@dataclasses.dataclass
class Rounds:
    """The trials as Tune experiments: the plan's (``tune/``), then, with ``--seeds auto``, one
    experiment per round of added seeds (``tune-r1/`` …, study/space/racing.py). A resume reruns the
    rounds in order (Tune restores each; the finished trials stay finished) and goes on."""

    plan: Plan
    study_dir: Path
    cache_root: Path
    res: Any
    fn: TrainFn
    args: StudyArgs
    log: Log
    cluster: dict[str, float]
    t0: float = dataclasses.field(default_factory=time.time)  # when this driver began
    storage: Storage | None = None
    round_s: list[float] = dataclasses.field(default_factory=list)  # wall time per trial wave

    def run(self) -> Plan:
        recorded = racing.read_rounds(self.study_dir)
        added = {t["id"] for r in recorded for t in r.get("trials", [])}
        rounds = [[t.id for t in self.plan.trials if t.id not in added]]
        rounds += [[t["id"] for t in r.get("trials", [])] for r in recorded]
        for k, ids in enumerate(rounds):
            if ids or self.plan.space.sampled:  # (a sampled study's trials are proposed)
                self._trials(ids, k, resume=self.args.resume)
        ended = bool(recorded) and not recorded[-1].get("trials")
        if self.plan.race is None or ended:
            return self.plan
        k = len(rounds)
        while not self._interrupted([i for r in rounds for i in r]):
            new = self._next_round(k, recorded)
            if not new:
                break
            rounds.append(new)
            self._trials(new, k, resume=False)
            k += 1
        return self.plan

    def _interrupted(self, ids: list[str]) -> bool:
        """Whether a trial of the rounds so far has not ended (Ctrl-C stopped Tune): then no
        round is added, and the study ends as interrupted (a resume goes on from here)."""
        rows = {r["id"]: r for r in collect_rows(self.plan, self.study_dir)}
        return any(rows.get(i, {}).get("status") not in FINISHED for i in ids)

    @property
    def slots(self) -> int:
        """How many trials run at once."""
        if self.res.gpus > 0:
            n = int(self.cluster.get("GPU", 0) // self.res.gpus)
        else:
            n = int(self.cluster.get("CPU", 1) // max(self.res.cpus, 1e-9))
        if self.args.max_concurrent:
            n = min(n, self.args.max_concurrent)
        return max(n, 1)

    def _trials(self, ids: list[str], k: int, *, resume: bool) -> None:
        start = time.time()
        pipeline.run_trials(
            self.plan,
            self.study_dir,
            self.cache_root,
            self.res,
            self.fn,
            resume=resume,
            max_concurrent=self.args.max_concurrent,
            max_failures=self.args.max_failures,
            searcher_seed=self.args.searcher_seed,
            log=self.log,
            trial_ids=ids if self.plan.race is not None or k else None,  # None: every one
            experiment=TUNE if k == 0 else f"{TUNE}-r{k}",
            storage=self.storage,
            callbacks=tracking.tracking_callbacks(self.args.track, self.study_dir),
        )
        waves = -(-len(ids) // self.slots)
        self.round_s.append((time.time() - start) / max(waves, 1))

    def _trial_s(self, rows: list[dict[str, Any]]) -> float | None:
        """Wall seconds of one wave of trials: measured in this run, else from the trials'
        training time (a resumed study) with a margin for evaluation and start-up."""
        if self.round_s:
            return max(self.round_s)
        times = [float(r["train_time_s"]) for r in rows if valid_metric(r.get("train_time_s"))]
        return 1.3 * sum(times) / len(times) if times else None

    def _next_round(self, k: int, recorded: list[dict[str, Any]]) -> list[str]:
        """Decide round ``k`` (racing.next_round), record it in race.json, compute its
        pretraining; returns the trial ids it added ([] = the race is over)."""
        plan, race = self.plan, self.plan.race
        assert race is not None
        rows = collect_rows(plan, self.study_dir)
        before = recorded[-1].get("elapsed_s", 0.0) if recorded else 0.0
        elapsed = before + time.time() - self.t0
        afford = racing.affordable_trials(
            race, len(plan.runnable()), elapsed, self._trial_s(rows), self.slots
        )
        axes = report_axes(plan)
        step = racing.next_round(
            rows, axes, plan.baseline, plan.space.metric, afford, race.max_seeds
        )
        new = [
            plan.planned_trial(dict(zip(axes, arm, strict=True)), s)
            for arm, seeds in step.add.items() for s in seeds
        ]
        jobs = []
        if new:
            jobs, _ = pretraining.plan_jobs(
                dataclasses.replace(plan, trials=new), self.cache_root, self.log
            )
        record = {
            "round": k,
            "trials": [t.to_dict() for t in new],
            "jobs": [j.to_dict() | {"config": j.config.to_dict()} for j in jobs],
            "statuses": [st.to_dict() for st in step.statuses],
            "affordable": afford,
            "elapsed_s": elapsed,
        }
        racing.write_round(self.study_dir, record)
        recorded.append(record)
        if self.storage is not None:
            self.storage.push_driver_files()
        states: dict[str, int] = {}
        for st in step.statuses:
            states[st.state] = states.get(st.state, 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in states.items())
        if not new:
            self.log(f"--seeds auto: no comparison to add seeds to ({counts} on validation)")
            return []
        self.log(
            f"--seeds auto, round {k}: {len(new)} more trial(s) ({counts} on validation; the "
            f"budget pays for {afford} more): {', '.join(t.id for t in new)}"
        )
        plan = pretraining.load_study_plan(self.study_dir)
        done = pretraining.run_jobs(
            plan, self.study_dir, self.cache_root, self.res, self.log, self.storage
        )
        self.plan = pretraining.applied(plan, done)
        return [t.id for t in new]


def _dry_run_outcome(
    plan: Plan, study_dir: Path, what: str, needs: dict[str, bool], log: Log
) -> StudyOutcome:
    """The dry run's one-line summary (to the log: stdout stays JSON lines)."""
    if plan.space.sampled:
        trials = f"{plan.num_samples * plan.seeds} sampled trials planned"
    else:
        notes = []
        if skipped := sum(1 for t in plan.trials if t.skip):
            notes.append(f"{skipped} to skip")
        if fetch := sum(1 for t in plan.trials if needs.get(t.id) and not t.skip):
            notes.append(f"{fetch} need COCO weights not on disk")
        trials = f"{len(plan.trials)} trials planned" + (f" ({', '.join(notes)})" if notes else "")
    jobs = len(plan.pretrain_jobs)
    summary = (
        f"dry run{what}: {trials}, {jobs} pretraining job{'s' if jobs != 1 else ''}; "
        "nothing was run"
    )
    log(summary)
    return StudyOutcome(study_dir, [], summary, 0)


def main_entry(args: StudyArgs) -> int:
    """CLI wrapper: errors as one clear line, Ctrl-C as a resume hint."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    socket.setdefaulttimeout(60)  # a download on a black-holed network must not hang the study
    # a dry run's stdout is JSON lines only: the human notes go to stderr
    log: Log = (lambda line: print(line, file=sys.stderr)) if args.dry_run else print
    out = f" --out {args.out}" if args.out else ""
    return cli.run_command(
        None,
        lambda: run_study(args, log=log).exit_code,
        interrupted=lambda: (
            f"\ninterrupted; continue with: python study/run.py --resume{out} --space {args.space}"
        ),
    )
