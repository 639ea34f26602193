"""The study driver: plan → COCO weights → pretraining (Ray tasks) → trials (Ray Tune) → outputs.

The steps live in study/plan.py, study/pretraining.py and study/coco.py (the plan, complete
before Ray starts and saved once), study/prepare.py (dry run, data check), study/pipeline.py
(Ray and Tune), study/trial.py (one trial) and study/outputs.py (the end of a study).

``run_study(StudyArgs(...))`` is what ``study/run.py`` calls; tests call it in-process with a fake
training function (``train_fn=``) and a Ray session they started themselves.

Study folder (``--out``, default ``studies/<space>-<timestamp>``)::

    plan.json            every planned trial's config, the pretraining jobs, skips (resume reads it)
    pretraining.json     what the pretraining jobs produced (study/pretraining.py)
    space.yaml           the space file as it was
    pretrain_cache/      center_loss / ssl backbones (default cache; see study/cache.py)
    trials/<id>/         trial.json, history.jsonl, attempts.jsonl, done.json (study/trial.py)
    tune/                Ray Tune's experiment (checkpoints, state for --resume)
    optuna.sqlite        the Optuna study of a sampled space
    status.json          how Tune ended each trial
    study.json           the study's id: --resume loads only studies this user created
                         (study/trust.py)
    driver.json          the running driver and its Ray processes (study/session.py)
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

from model.config import DEVICES, parse_override
from study import cli, coco, pipeline, prepare, pretraining, session, trust
from study.args import StudyArgs
from study.files import atomic_write_text
from study.layout import PLAN, SPACE, StudyError
from study.outputs import StudyOutcome, finish
from study.plan import Plan, build_plan, describe_profile
from study.spaces import _nonneg_int, load_space
from study.trial import TrainFn

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
    return build_plan(
        space, data=data, overrides=overrides, seeds=args.seeds, full=args.full, cuda=cuda
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
        _nonneg_int(args.max_failures, "max_failures", "--max-failures")
    if args.resume:
        study_dir = study_dir_for(args, Path(args.space).stem)
        if not (study_dir / PLAN).is_file():
            raise StudyError(f"--resume: {study_dir} has no plan.json; nothing to resume")
        if args.overrides or args.data or args.seeds not in (None, 1) or args.full:
            raise StudyError(
                "--resume keeps the study's own plan; drop --set/--data/--seeds/--full"
            )
        if not args.dry_run:  # a dry run reads plan.json only (JSON), never Tune's pickles
            trust.check_resumable(study_dir)
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
    if args.resume:
        session.stop_stale(study_dir, log)
    data = prepare.check_data(plan, strict=args.strict, log=log)
    ship_by_value(fn)
    with trust.private_umask():
        plan = _run(plan, study_dir, cache_root, fn, data, args, log)
    return finish(plan, study_dir, time.time() - t0, log)


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
) -> Plan:
    """Ray up, the study folder, pretraining, the trials; Ray down and the folder's record
    cleaned whatever happens. Returns the plan with what the pretraining produced."""
    cluster = pipeline.start_ray(args.address, args.dashboard_host, log)
    try:  # the folder appears once Ray is up: a failed start leaves nothing to --resume
        study_dir.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_text(study_dir / SPACE, plan.space.text)
            trust.write_manifest(study_dir)
        session.record(study_dir, pipeline.owns_ray())
        prepare.write_data_reports(study_dir, data, log)
        if not args.resume:
            plan.save(study_dir / PLAN)  # once: what the pretraining adds is pretraining.json
        res = pipeline.effective_resources(
            plan, args.cpus_per_trial, args.gpus_per_trial, cluster, log
        )
        done = pretraining.run_jobs(plan, study_dir, cache_root, res, log)
        plan = pretraining.applied(plan, done)
        session.record(study_dir, pipeline.owns_ray())  # Ray's agents are up by now
        pipeline.run_trials(
            plan,
            study_dir,
            cache_root,
            res,
            fn,
            resume=args.resume,
            max_concurrent=args.max_concurrent,
            max_failures=args.max_failures,
            searcher_seed=args.searcher_seed,
            log=log,
        )
    finally:
        pipeline.stop_ray()
        session.clear(study_dir)
        trust.harden(study_dir)
    return plan


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
