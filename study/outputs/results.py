"""The study's results table: one row per trial, read from the files the trials and the driver
write, so it can be rebuilt at any time (while the study runs, after a crash, after a resume).

``results.csv`` columns: ``id, status, reason, role``; the 12 COCO numbers on the **validation**
split (``val_mAP`` … ``val_AR_large``: of the checkpoint chosen on it, best.pt, for a finished
trial; of its last evaluation for a stopped or unfinished one) — what every choice of the study
(best.pt, ASHA, Optuna, the best trial) is made on; the 12 numbers on the **test** split
(``test_mAP`` … ``test_AR_large``), scored once at the end on that checkpoint, with the
bootstrap intervals over the test images (``test_mAP_lo``, ``test_mAP_hi``, ``test_AP50_lo``,
``test_AP50_hi``) — what the report quotes; ``best_epoch`` (the chosen checkpoint's), ``epoch,
train_time_s, images_per_s, params, attempts`` (starts that trained: a resume that only found
the trial finished does not count), the assignment diagnostics, the data check's counts
(``data_images`` … ``data_problems``, see study/outputs/datacheck.py), then every trial-config key.
Status is one of

* ``done`` — the training function returned (``trials/<id>/done.json``);
* ``stopped`` — ended early by the scheduler (ASHA): metrics are its last evaluation;
* ``error`` — failed for good: a deterministic failure (``trials/<id>/failed.json``, never
  retried; the reason names the checkpoints kept in the trial folder), or a crash after its
  retries (the cause Ray named); the tracebacks are in ``trials/<id>/trial.log``;
* ``skipped`` — never started; ``reason`` says why (e.g. COCO weights unavailable);
* ``unfinished`` / ``pending`` — interrupted mid-way / not started yet (resume the study).
"""

from __future__ import annotations

import csv
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

from model.assign.diagnostics import ASSIGN_DIAGNOSTICS
from model.bootstrap import BOOTSTRAP_METRICS
from model.coco_eval import TEST_METRICS, VAL_METRICS
from model.config import config_keys
from study.files import atomic_write
from study.layout import (
    ATTEMPTS,
    DONE,
    FAILED,
    HISTORY,
    RESULTS,
    STATUS,
    TRIAL,
    trial_dir,
)
from study.outputs.datacheck import DATA_COLUMNS
from study.space.plan import Plan

BOOTSTRAP_COLUMNS = tuple(f"test_{m}_{e}" for m in BOOTSTRAP_METRICS for e in ("lo", "hi"))
RUN_KEYS = ("best_epoch", "epoch", "train_time_s", "images_per_s", "params")  # from the trial
RUN_COLUMNS = (*RUN_KEYS, "attempts")  # attempts: counted from attempts.jsonl
ASSIGN_COLUMNS = ASSIGN_DIAGNOSTICS  # label-assignment diagnostics of the last evaluated epoch
HEAD_COLUMNS = ("id", "status", "reason", "role")  # role: baseline (or its stand-in), else ""


def columns() -> list[str]:
    return [
        *HEAD_COLUMNS, *VAL_METRICS, *TEST_METRICS, *BOOTSTRAP_COLUMNS, *RUN_COLUMNS,
        *ASSIGN_COLUMNS, *DATA_COLUMNS, *config_keys()
    ]


# attempts.jsonl lines of a start that did not train: done.json or failed.json found, or the
# run had already finished and only its record was completed
NOT_RESTARTS = ("reused_done", "reused_failure", "finished_from_history", "finished_before")


def count_attempts(path: Path) -> int:
    """Starts of the training function that trained (the first run and each real restart)."""
    if not path.is_file():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: it was a start
            n += 1
            continue
        n += not any(rec.get(k) for k in NOT_RESTARTS)
    return n


def read_history(path: Path) -> list[dict[str, Any]]:
    """Reported evaluations in epoch order; a repeated epoch (a retry) keeps its last line."""
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: the retry writes it again
                continue
            by_epoch[rec.get("epoch", len(by_epoch))] = rec
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def trial_ids(plan: Plan, study_dir: Path) -> list[str]:
    """Planned trials in plan order, then trials the searcher proposed (sampled studies)."""
    ids = [t.id for t in plan.trials]
    folder = study_dir / "trials"
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ids + [i for i in extra if i not in set(ids)]


ROW_FILES = (TRIAL, ATTEMPTS, HISTORY, DONE, FAILED)  # the files a trial's row is read from


class RowCache:
    """Rows kept between rebuilds of the table (the driver's callback rebuilds it each time a
    trial ends): a trial's row is read again only when one of its files, or its entry in
    status.json, changed — so a study of N trials costs N row reads per rebuild in ``stat``
    calls, not in reading and parsing every trial's files (quadratic over a study: 0.12 s a
    rebuild at 500 trials). The rows are the same as without it."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Any, dict[str, Any]]] = {}  # id -> (its files' state, row)
        self.reads = 0  # rows read from their files (not from here)

    def row(self, key: Any, tid: str, read: Any) -> dict[str, Any]:
        """``tid``'s row: kept if ``key`` (its files' state) is unchanged, else ``read()``."""
        kept = self.rows.get(tid)
        if kept is None or kept[0] != key:
            self.reads += 1
            kept = (key, read())
            self.rows[tid] = kept
        return dict(kept[1])  # (_fill_params completes the copies, not the kept rows)


def _files_state(tdir: Path) -> tuple[Any, ...]:
    """Inode, modification time and size of each file a trial's row is read from: an append
    changes the size, an atomic rewrite (study/files.py) the inode."""
    state = []
    for name in ROW_FILES:
        try:
            st = (tdir / name).stat()
            state.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            state.append(None)
    return tuple(state)


def collect_rows(
    plan: Plan, study_dir: Path, cache: RowCache | None = None
) -> list[dict[str, Any]]:
    """Every trial's row (:func:`trial_ids` order); ``cache``: rows kept since the last call."""
    statuses = _json(study_dir / STATUS) or {}
    planned = {t.id: t for t in plan.trials}
    baseline = set(plan.baseline_ids())
    role = "baseline"
    if plan.stand_in_for:
        replaced = ", ".join(f"{k}={v}" for k, v in plan.stand_in_for.items())
        role += f" (stand-in for {replaced})"
    rows = []
    for tid in trial_ids(plan, study_dir):
        status, trial = statuses.get(tid, {}), planned.get(tid)
        own_role = role if tid in baseline else ""
        read = partial(_trial_row, tid, study_dir, status, trial, own_role)
        if cache is None:
            rows.append(read())
            continue
        files = _files_state(trial_dir(study_dir, tid))
        if trial is not None and files[0] is None:  # no trial.json: its config from the plan
            rows.append(read())
            continue
        key = (files, json.dumps(status, sort_keys=True), trial.skip if trial else None, own_role)
        rows.append(cache.row(key, tid, read))
    _fill_params(rows)
    return rows


def _trial_row(
    tid: str, study_dir: Path, tune_status: dict[str, Any], trial: Any, role: str
) -> dict[str, Any]:
    """One trial's row from its files, its entry in status.json and its plan (if planned)."""
    tdir = trial_dir(study_dir, tid)
    info = _json(tdir / TRIAL) or {}
    cfg = info.get("config") or (trial.config.to_dict() if trial is not None else {})
    row: dict[str, Any] = {"id": tid, "status": "pending", "reason": "", **cfg}
    row["role"] = role
    row["attempts"] = count_attempts(tdir / ATTEMPTS)
    row.update(info.get("data") or {})
    history = read_history(tdir / HISTORY)
    done = _json(tdir / DONE)
    failed = _json(tdir / FAILED)
    metrics: dict[str, Any] = dict(history[-1]) if history else {}
    if trial is not None and trial.skip:
        row.update(status="skipped", reason=trial.skip)
    elif done is not None:
        # the returned summary wins: its val_* are the chosen checkpoint's (best.pt), the
        # last report's those of the last evaluation
        metrics = {**done.get("final", {}), **done.get("summary", {})}
        row["status"] = "done"
    elif failed is not None:
        row.update(status="error", reason=failed.get("error", ""))
    elif tune_status.get("status") == "ERROR":
        row.update(status="error", reason=tune_status.get("error", "")[:300])
    elif tune_status.get("status") == "TERMINATED":
        if metrics.get("epoch") is not None and metrics["epoch"] >= row.get("epochs", 0):
            row["status"] = "done"  # ended at its last epoch before recording done.json
        else:
            row.update(status="stopped", reason=f"stopped early at epoch {metrics.get('epoch')}")
    elif history:
        row["status"] = "unfinished"
    for key in (*VAL_METRICS, *TEST_METRICS, *BOOTSTRAP_COLUMNS, *RUN_KEYS, *ASSIGN_COLUMNS):
        if key in metrics:
            row[key] = metrics[key]
    return row


def _fill_params(rows: list[dict[str, Any]]) -> None:
    """A stopped trial never returned its parameter count; its size's done trials know it."""
    known = {(r.get("size"), r.get("num_classes")): r["params"] for r in rows if r.get("params")}
    for r in rows:
        if not r.get("params") and (r.get("size"), r.get("num_classes")) in known:
            r["params"] = known[(r.get("size"), r.get("num_classes"))]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    cols = columns()

    def write(f: Any) -> None:
        w = csv.writer(f)  # (DictWriter's rows, without its dict-to-list pass: the driver
        w.writerow(cols)  # rewrites this table at every trial end)
        w.writerows([_cell(r.get(k)) for k in cols] for r in rows)

    # readers (and a test polling it) never see a half-written table
    return atomic_write(path, write, newline="")


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def read_csv(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` back with numbers as numbers (empty cells → None)."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def write_results(
    plan: Plan, study_dir: Path, cache: RowCache | None = None
) -> list[dict[str, Any]]:
    rows = collect_rows(plan, study_dir, cache)
    write_csv(rows, study_dir / RESULTS)
    return rows


def histories(rows: list[dict[str, Any]], study_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {r["id"]: read_history(trial_dir(study_dir, r["id"]) / HISTORY) for r in rows}
