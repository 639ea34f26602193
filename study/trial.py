"""The Ray Tune trainable: one trial = one call of the training function.

Per trial, under ``<study>/trials/<id>/`` (the study folder must be on a filesystem every node
sees, as for Ray's own local ``storage_path``):

* ``trial.json`` — the full config the trial ran with;
* ``history.jsonl`` — every reported evaluation (epoch, losses, the 12 COCO numbers, …);
* ``attempts.jsonl`` — one line per start (a retry after a crash, a resume) and where it resumed;
* ``done.json`` — written when the training function returned: its summary and the final metrics.
  A trial that finds ``done.json`` reports it again instead of training: Tune's experiment state
  is snapshotted every few seconds, so a study killed right after a trial finished may not know it
  finished — this file makes sure a resume never reruns it.

Tune checkpoints: after each evaluation the training function's ``last.pt`` (written to a
node-local scratch folder) is handed to ``tune.report`` (Tune copies it to the trial's storage
folder); on a retry or a resume the latest one is copied back into the scratch folder and the
training function resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import TrialConfig, config_from_dict, config_keys

TrainFn = Callable[..., dict[str, Any]]
PLAN_ID = "plan_id"  # the param-space key of grid studies: which planned trial to run
TRIAL_INDEX = "__trial_index__"  # set by tune.search.Repeater: the seed of a repeated sample


def trial_dir(study_dir: str | Path, trial_id: str) -> Path:
    return Path(study_dir) / "trials" / trial_id


def scratch_dir(study_dir: str | Path, trial_id: str) -> Path:
    """Node-local folder for the training function's checkpoints. Not Tune's trial folder: Tune
    uploads that to storage with every experiment snapshot (hundreds of MB per trial, copied
    again and again); Tune's own checkpoints already keep every reported last.pt."""
    study = hashlib.sha1(str(Path(study_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "yolox-flow-trials" / f"{study}-{trial_id}"


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


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())  # the driver may be killed next: the line must be on disk


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def trial_config(
    config: dict[str, Any],
    plan_configs: dict[str, dict[str, Any]],
    base: dict[str, Any],
    fallback_id: str,
) -> tuple[str, TrialConfig]:
    """(trial id, config) from Tune's ``config``: a planned grid trial, or base + sampled values."""
    if PLAN_ID in config:
        tid = config[PLAN_ID]
        return tid, config_from_dict(plan_configs[tid], source=f"planned trial {tid}")
    keys = set(config_keys())
    values = {**base, **{k: v for k, v in config.items() if k in keys}}
    if TRIAL_INDEX in config:  # --seeds with a sampled space: repeat i of the same proposal
        values["seed"] = int(config[TRIAL_INDEX])
    return fallback_id, config_from_dict(values, source=f"sampled trial {fallback_id}")


def run_trial(
    config: dict[str, Any],
    *,
    train_fn: TrainFn,
    study_dir: str,
    plan_configs: dict[str, dict[str, Any]],
    base: dict[str, Any],
    cache_root: str,
    threads: int = 1,
) -> None:
    """Tune function trainable (bind the keyword arguments with ``tune.with_parameters``)."""
    from ray import tune

    # Tune logs every persisted checkpoint at INFO from each worker: noise in the driver output.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(max(1, threads))  # the trial's CPU share, not the whole machine
    ctx = tune.get_context()
    tid, cfg = trial_config(config, plan_configs, base, f"trial-{ctx.get_trial_id()}")
    if cfg.pretrain in ("center_loss", "ssl") and not cfg.pretrain_artifact:
        from study.cache import ArtifactCache  # sampled pretraining settings: resolved per trial

        cfg = ArtifactCache(cache_root).resolve(cfg, progress=False)
    out = trial_dir(study_dir, tid)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "trial.json",
        {
            "id": tid,
            "tune_trial_id": ctx.get_trial_id(),
            "torch_threads": torch.get_num_threads(),
            "config": cfg.to_dict(),
        },
    )
    done = out / "done.json"
    if done.is_file():  # finished before an interruption: report it again, do not retrain
        record = json.loads(done.read_text())
        _append(out / "attempts.jsonl", {"time": time.time(), "reused_done": True})
        tune.report(record["final"])
        return

    scratch = scratch_dir(study_dir, tid)
    work = scratch / "work"  # what the training function writes
    ckpt = tune.get_checkpoint()
    if ckpt is None and not (out / "attempts.jsonl").is_file():
        # this study's first attempt: anything there is left from a deleted study of that path
        shutil.rmtree(scratch, ignore_errors=True)
    # else, without a Tune checkpoint, a scratch last.pt is this trial's own, newer than what
    # Tune registered before an interruption: the training function resumes from it
    work.mkdir(parents=True, exist_ok=True)
    restored = None
    if ckpt is not None:  # a retry or a resume: continue from Tune's latest checkpoint
        with ckpt.as_directory() as d:
            for f in Path(d).iterdir():
                if f.is_file():
                    shutil.copy2(f, work / f.name)
        restored = ckpt.path
    _append(out / "attempts.jsonl", {"time": time.time(), "restored_from": restored})
    stage = scratch / "stage"
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint_path: str | None = None) -> None:
        flat = scalar_metrics(metrics)
        last.clear()
        last.update(flat)
        # history first: if the process dies between the two, the line is kept and the next
        # attempt (resuming from the previous checkpoint) rewrites that epoch; readers keep the
        # last line per epoch.
        _append(out / "history.jsonl", flat)
        tune.report(flat, checkpoint=_stage(checkpoint_path, stage))

    summary = scalar_metrics(train_fn(cfg, report, str(work), resume=True, progress=False) or {})
    final = dict(last)
    if not final:  # nothing reported by this attempt (it resumed a finished run): the last
        # evaluation an earlier attempt reported, completed by the returned summary
        history = _read_last(out / "history.jsonl")
        final = {**summary, **history}
        tune.report(final)
    _write_json(done, {"id": tid, "final": final, "summary": summary})
    shutil.rmtree(scratch, ignore_errors=True)  # Tune keeps the checkpoints


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
    try:
        os.link(src, stage / src.name)  # Tune copies the folder during report: a link is enough
    except OSError:
        shutil.copy2(src, stage / src.name)
    return tune.Checkpoint.from_directory(str(stage))
