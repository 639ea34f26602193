"""Before the trials: the dry-run listing and the data check of every dataset the trials use
(the pretraining jobs are study/artifacts/jobs.py's, the COCO weights
study/artifacts/coco_weights.py's)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import describe_inference
from study.files import atomic_write_json, atomic_write_text
from study.layout import DATA_REPORT_JSON, DATA_REPORT_TXT, SPLIT
from study.space.plan import Plan

Log = Callable[[str], None]


# --- dry run ---------------------------------------------------------------------------------


def print_dry_run(plan: Plan, needs: dict[str, bool]) -> None:
    """Every planned trial as one JSON line (full config), then the pretraining jobs."""
    key_of = {tid: j.key for j in plan.pretrain_jobs for tid in j.trials}
    if plan.space.sampled:
        print(
            json.dumps(
                {
                    "kind": "search",
                    "sample": {k: d.to_dict() for k, d in plan.space.sample.items()},
                    "num_samples": plan.num_samples,
                    "seeds": plan.seeds,
                    "scheduler": plan.space.scheduler.kind,
                    "config": plan.base.to_dict(),
                }
            )
        )
    for t in plan.trials:
        rec = t.to_dict()
        rec = {
            "kind": "trial",
            **rec,
            "input": describe_inference(t.config),
            "needs_download": needs.get(t.id, False),
            "pretrain_job": key_of.get(t.id),
        }
        rec["config"] = rec.pop("config")  # last: the long part
        print(json.dumps(rec))
    for j in plan.pretrain_jobs:
        print(json.dumps({"kind": "pretrain", **j.to_dict()}))
    sys.stdout.flush()


# --- data check -------------------------------------------------------------------------------


@dataclasses.dataclass
class DataSource:
    """One dataset as the trials read it, its check and the trials that use it."""

    trials: list[str]
    report: Any  # model.data.validate.DataReport
    split: dict[str, Any] = dataclasses.field(default_factory=dict)  # split_record()


def split_record(dataset: Any, cfg: Any) -> dict[str, Any]:
    """Which images each split holds and how the validation split was made (split.json)."""
    return {
        "data": str(dataset.root),
        "data_arg": cfg.data,  # as the trials read it ("" = the embedded dataset)
        "validation": (
            f"held out of the training images: val_fraction {cfg.val_fraction}, split_seed "
            f"{cfg.split_seed}, stratified by box count and class (model/data/raw.py "
            "carve_validation)" if dataset.val_held_out else "the layout's own val split"
        ),
        "test": "the layout's test split" if "test" in dataset.splits else "none",
        "counts": {name: split.num_images for name, split in dataset.splits.items()},
        "frame_side": max(
            (max(int(im["width"]), int(im["height"])) for im in dataset.train.images), default=0
        ),
        "val_images": [str(im["file_name"]) for im in dataset.splits["val"].images]
        if "val" in dataset.splits else [],
    }


def check_data(plan: Plan, *, strict: bool, log: Log) -> list[DataSource]:
    """Check every dataset the runnable trials use, once each, before Ray starts: a split
    without a usable image is a DataError naming the folder, and with ``strict`` any dropped,
    clipped or fixed image or box stops the study (the trials check their own data again)."""
    from model.trainer import load_trial_data
    from study.outputs.datacheck import strict_error

    if plan.space.sampled:
        cfgs = {"(every sampled trial)": plan.base}
    else:
        cfgs = {t.id: t.config for t in plan.runnable()}
    sources: dict[tuple[Any, ...], DataSource] = {}
    for tid, cfg in cfgs.items():
        # the trial's seed changes nothing of the data: one check per dataset and hold-out
        key = (cfg.data, cfg.val_fraction, cfg.split_seed, cfg.num_classes, cfg.classes)
        if key in sources:
            sources[key].trials.append(tid)
            continue
        found: list[Any] = []
        dataset = load_trial_data(cfg, progress=sys.stderr.isatty(), on_report=found.append)
        sources[key] = DataSource([tid], found[0], split_record(dataset, cfg))
        report = found[0]
        if strict and report.issues:
            listed = f"python -m model.data check {report.root} lists every one"
            raise strict_error(report, listed)
    return list(sources.values())


def write_data_reports(study_dir: Path, sources: list[DataSource], log: Log) -> None:
    """``data_report.txt`` (every problem of every dataset) and ``data_report.json`` (per
    dataset: its trials, counts and console line) into the study folder; one line each here."""
    from study.outputs.datacheck import data_counts, data_line

    txt = study_dir / DATA_REPORT_TXT
    parts, records = [], []
    for s in sources:
        text = s.report.format(max_issues=None)
        if len(sources) > 1:
            text = f"== data of {len(s.trials)} trials: {', '.join(s.trials)}\n{text}"
        parts.append(text)
        line = data_line(s.report, txt)
        counts = data_counts(s.report)
        records.append(
            {"trials": s.trials, "counts": counts, "line": line, "report": s.report.to_dict()}
        )
        log(line)
    atomic_write_text(txt, "\n\n".join(parts) + "\n")
    atomic_write_json(study_dir / DATA_REPORT_JSON, {"sources": records})
    splits = [{"trials": s.trials, **s.split} for s in sources if s.split]
    if splits:
        atomic_write_json(study_dir / SPLIT, {"sources": splits}, indent=1)
        for sp in splits:
            c = sp["counts"]
            log(
                f"splits of {sp['data']}: train {c.get('train', 0)}, val {c.get('val', 0)} "
                f"({sp['validation'].split(':')[0]}; every choice is made on it), test "
                f"{c.get('test', 0)} (scored once per trial) — {study_dir / SPLIT}"
            )
