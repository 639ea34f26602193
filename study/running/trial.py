"""The Ray Tune trainable: one trial = one call of the training function.

Per trial, under ``<study>/trials/<id>/`` (the study folder must be on a filesystem every node
sees, as for Ray's own local ``storage_path``):

* ``trial.json`` — the full config the trial ran with;
* ``history.jsonl`` — every reported evaluation (epoch, losses, the 12 COCO numbers, …);
* ``attempts.jsonl`` — one line per start (a retry after a crash, a resume) and where it resumed;
* ``done.json`` — written when the training function returned: its summary and the final metrics.
  A trial that finds ``done.json`` reports it again instead of training: Tune's experiment state
  is snapshotted every few seconds, so a study killed right after a trial finished may not know it
  finished — this file makes sure a resume never reruns it. A trial whose last evaluation is in
  ``history.jsonl`` but that has no checkpoint of it (interrupted while Tune held its final
  report) writes ``done.json`` from that record instead of training again;
* ``failed.json`` — a deterministic failure (non-finite loss, config or data error: see
  :func:`model.error_bases.deterministic_errors`): the reason, with the checkpoints it names copied
  here. The trainable returns instead of raising, so Tune does not retry what would fail the
  same way;
* ``trial.log`` — the data line, and every traceback (this trial's, and Ray's for a crash);
* ``data_report.txt`` / ``data_report.json`` — the data check of the data this trial trained on;
* ``test_eval.npz`` — the test split's per-image evaluation of the chosen checkpoint
  (model/bootstrap.py): the report's paired bootstrap resamples the same images for every trial.

Tune checkpoints: after each evaluation the training function's ``last.pt`` (written to a
node-local scratch folder) is handed to ``tune.report`` (Tune copies it to the trial's storage
folder); on a retry or a resume the latest one is copied back into the scratch folder and the
training function resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import TrialConfig, config_from_dict, config_keys
from model.error_bases import deterministic_errors
from model.eval_preview import EVAL_PREVIEW
from study.files import append_jsonl, atomic_write_json
from study.layout import (
    ATTEMPTS,
    DONE,
    FAILED,
    HISTORY,
    LOG,
    PLAN_ID,
    TEST_EVAL,
    TRIAL,
    TRIAL_INDEX,
    scratch_dir,
    trial_dir,
)
from study.running.storage import Storage, TrialRecords

TrainFn = Callable[..., dict[str, Any]]


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts (``losses/iou_loss``) and keep numbers, bools and short strings:
    Tune and the CSV take scalars only."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalar_metrics(v, f"{name}/"))
        elif isinstance(v, bool) or isinstance(v, int):
            out[name] = v
        elif isinstance(v, float):
            out[name] = v if math.isfinite(v) else None
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            out[name] = v.item()
        elif isinstance(v, str) and len(v) <= 200 and "\n" not in v:
            out[name] = v
    return out


def trial_config(
    config: dict[str, Any],
    plan_configs: dict[str, TrialConfig],
    base: TrialConfig,
    fallback_id: str,
) -> tuple[str, TrialConfig]:
    """(trial id, config) from Tune's ``config``: a planned grid trial as the plan built it, or
    the base with the values the searcher sampled (checked here: they are new)."""
    if PLAN_ID in config:
        tid = config[PLAN_ID]
        return tid, plan_configs[tid]
    keys = set(config_keys())
    values = {k: v for k, v in config.items() if k in keys}
    if TRIAL_INDEX in config:  # --seeds with a sampled space: repeat i of the same proposal
        values["seed"] = int(config[TRIAL_INDEX])
    return fallback_id, config_from_dict(values, source=f"sampled trial {fallback_id}", base=base)


def log_line(out: Path, text: str, name: str = LOG) -> None:
    """Append to the trial's own log, ``trials/<id>/trial.log`` (its tracebacks go here), or to
    ``name`` (the driver's ``crashes.log``: Ray's account of a crash)."""
    with open(out / name, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")


def run_trial(
    config: dict[str, Any],
    *,
    train_fn: TrainFn,
    study_dir: str,
    plan_configs: dict[str, TrialConfig],
    base: TrialConfig,
    cache_root: str,
    storage_uri: str | None = None,
) -> None:
    """Tune function trainable (bind the keyword arguments with ``tune.with_parameters``).

    The trial's records go to the study's storage (study/running/storage.py): the study folder
    itself on one machine (``storage_uri`` None), else a node-local folder pushed to the URI, from
    which the driver pulls them.

    A deterministic failure (:func:`model.error_bases.deterministic_errors`) ends the trial without
    raising, so that Tune does not retry it: ``failed.json`` holds the reason, ``trial.log`` the
    traceback.
    """
    from ray import tune

    # Tune logs every persisted checkpoint and restore at INFO from each worker: noise in the
    # driver output.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = tune.get_context()
    fallback = f"trial-{ctx.get_trial_id()}"
    tid = config.get(PLAN_ID) or fallback
    storage = Storage(storage_uri or study_dir, Path(study_dir).resolve())
    records = TrialRecords(storage, tid)
    if _ended_before(records):
        return
    scratch = scratch_dir(study_dir, tid)
    try:
        _attempt(config, tid, fallback, records, scratch, train_fn, plan_configs, base,
                 cache_root)
    except deterministic_errors() as e:  # model/error_bases.py
        record_failure(records.out, scratch, e, shown=trial_dir(study_dir, tid))
        records.push()


def _ended_before(records: TrialRecords) -> bool:
    """A trial that finished (``done.json``) or failed for good (``failed.json``) before an
    interruption ends again at once: Tune's experiment state is snapshotted every few seconds,
    so a resumed study may not know it ended. The records are read from the storage, so this
    holds on any node, with no shared disk."""
    from ray import tune

    out = records.out
    done = out / DONE
    if done.is_file():
        record = json.loads(done.read_text())
        append_jsonl(out / ATTEMPTS, {"time": time.time(), "reused_done": True})
        records.push()
        tune.report(record["final"])
        return True
    if (out / FAILED).is_file():
        append_jsonl(out / ATTEMPTS, {"time": time.time(), "reused_failure": True})
        records.push()
        return True
    return False


def _attempt(
    config: dict[str, Any],
    tid: str,
    fallback: str,
    records: TrialRecords,
    scratch: Path,
    train_fn: TrainFn,
    plan_configs: dict[str, TrialConfig],
    base: TrialConfig,
    cache_root: str,
) -> None:
    """One start of the training function (a first run, a retry after a crash, a resume)."""
    from ray import tune

    from study.artifacts.jobs import resolve_for_trial  # (a sampled search's artifacts: per trial)

    out = records.out
    _, cfg = trial_config(config, plan_configs, base, fallback)
    if cfg.pretrain_artifact:  # published by the driver: fetched when this node lacks it
        cfg = dataclasses.replace(
            cfg, pretrain_artifact=records.storage.fetch_artifact(cfg.pretrain_artifact)
        )
    cfg = resolve_for_trial(cfg, cache_root)
    info = {
        "id": tid,
        "tune_trial_id": tune.get_context().get_trial_id(),
        "torch_threads": cfg.threads,  # the trial's CPU share (pipeline.with_threads)
        "config": cfg.to_dict(),
    }
    atomic_write_json(out / TRIAL, info)
    work = scratch / "work"  # what the training function writes
    restored = _restore_work(out, scratch, work)
    previous = _read_last(out / HISTORY)
    finished = isinstance(previous.get("epoch"), int) and previous["epoch"] >= cfg.epochs
    if finished and restored is None and not any(work.iterdir()):
        # its last evaluation is on record but no checkpoint of it (a study interrupted while
        # Tune held the final report): finish from the record instead of training again
        append_jsonl(out / ATTEMPTS, {"time": time.time(), "finished_from_history": True})
        atomic_write_json(out / DONE, {"id": tid, "final": previous, "summary": {}})
        records.push()
        tune.report(previous)
        shutil.rmtree(scratch, ignore_errors=True)
        return
    attempt: dict[str, Any] = {"time": time.time(), "restored_from": restored}
    if finished:
        attempt["finished_before"] = True  # resumes a finished run: not a restart
    append_jsonl(out / ATTEMPTS, attempt)
    records.push()
    _train(cfg, tid, info, records, scratch, train_fn)


def _restore_work(out: Path, scratch: Path, work: Path) -> str | None:
    """Tune's latest checkpoint of this trial copied into ``work`` (a retry or a resume
    continues from it); returns its path, or None for a first start."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None and not (out / ATTEMPTS).is_file():
        # this study's first attempt: anything there is left from a deleted study of that path
        shutil.rmtree(scratch, ignore_errors=True)
    # else, without a Tune checkpoint, a scratch last.pt is this trial's own, newer than what
    # Tune registered before an interruption: the training function resumes from it
    work.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        for f in Path(d).iterdir():
            if f.is_file():
                shutil.copy2(f, work / f.name)
    return ckpt.path


def _train(
    cfg: TrialConfig,
    tid: str,
    info: dict[str, Any],
    records: TrialRecords,
    scratch: Path,
    train_fn: TrainFn,
) -> None:
    """Check the data (its report into the trial folder), call the training function with a
    ``report`` that records each evaluation and hands Tune the checkpoint, then ``done.json``."""
    from ray import tune

    from model.trainer import load_trial_data, preloaded_data
    from study.outputs.datacheck import ReportWriter, data_counts

    out = records.out
    writer = ReportWriter(out, lambda line: log_line(out, line))
    dataset = load_trial_data(cfg, on_report=writer)
    if writer.report is not None:  # (None only if someone preloaded the data: never here)
        atomic_write_json(out / TRIAL, {**info, "data": data_counts(writer.report)})
    records.push()
    stage = scratch / "stage"
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint_path: str | None = None) -> None:
        flat = scalar_metrics(metrics)
        last.clear()
        last.update(flat)
        # history first: if the process dies between the two, the line is kept and the next
        # attempt (resuming from the previous checkpoint) rewrites that epoch; readers keep the
        # last line per epoch.
        append_jsonl(out / HISTORY, flat)
        records.push()  # in storage before Tune hands the result to the driver
        tune.report(flat, checkpoint=_stage(checkpoint_path, stage))

    with preloaded_data(cfg, dataset):
        result = train_fn(cfg, report, str(scratch / "work"), resume=True, progress=False)
    summary = scalar_metrics(result or {})
    test_eval = (result or {}).get("test_eval")
    if isinstance(test_eval, str) and Path(test_eval).is_file():  # for the paired bootstrap
        shutil.copy2(test_eval, out / TEST_EVAL)
    final = dict(last)
    reported = bool(final)
    if not reported:  # nothing reported by this attempt (it resumed a finished run): the last
        # evaluation an earlier attempt reported, completed by the returned summary
        final = {**summary, **_read_last(out / HISTORY)}
    atomic_write_json(out / DONE, {"id": tid, "final": final, "summary": summary})
    records.push()  # done.json reaches the storage before the trial ends
    if not reported:
        tune.report(final)
    shutil.rmtree(scratch, ignore_errors=True)  # Tune keeps the checkpoints


def record_failure(
    out: Path, scratch: Path, error: BaseException, shown: Path | None = None
) -> None:
    """``failed.json`` and the traceback in ``trial.log``; the training function's checkpoints
    move from the scratch folder (deleted when the trial ends) into the trial's records, and the
    message names them in the driver's trial folder (``shown``; default ``out``)."""
    work = scratch / "work"
    shown = shown or out
    kept = []
    for name in ("last.pt", "best.pt"):
        if (work / name).is_file():
            shutil.copy2(work / name, out / name)
            kept.append(str(shown / name))

    def here(text: str) -> str:
        return text.replace(str(work), str(shown))

    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    log_line(out, "failed, not retried (a retry would fail the same way):\n" + here(trace))
    reason = here(f"{type(error).__name__}: {error}").replace("\n", " ")
    atomic_write_json(
        out / FAILED,
        {
            "error": reason,
            "type": type(error).__name__,
            "time": time.time(),
            "kept": kept,
            "log": str(shown / LOG),
        },
    )
    shutil.rmtree(scratch, ignore_errors=True)


def _read_last(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return {}


def _stage(checkpoint_path: str | None, stage: Path) -> Any:
    """A Tune checkpoint holding just the reported file (or the reported folder)."""
    from ray import tune

    if not checkpoint_path:
        return None
    src = Path(checkpoint_path)
    if src.is_dir():
        return tune.Checkpoint.from_directory(str(src))
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    # (issue 27) the evaluation's preview travels with its checkpoint, for the trackers
    for f in (src, src.with_name(EVAL_PREVIEW)):
        if f == src or f.is_file():
            try:
                os.link(f, stage / f.name)  # Tune copies the folder during report: a link will do
            except OSError:
                shutil.copy2(f, stage / f.name)
    return tune.Checkpoint.from_directory(str(stage))
