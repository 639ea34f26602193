"""Before the trials: the dry-run listing and the data check of every dataset the trials use
(the pretraining jobs are study/pretraining.py's, the COCO weights study/coco.py's)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import describe_inference
from study.files import atomic_write_json, atomic_write_text
from study.layout import DATA_REPORT_JSON, DATA_REPORT_TXT
from study.plan import Plan

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


def check_data(plan: Plan, *, strict: bool, log: Log) -> list[DataSource]:
    """Check every dataset the runnable trials use, once each, before Ray starts: a split
    without a usable image is a DataError naming the folder, and with ``strict`` any dropped,
    clipped or fixed image or box stops the study (the trials check their own data again)."""
    from model.train import load_trial_data
    from study.datacheck import strict_error

    if plan.space.sampled:
        cfgs = {"(every sampled trial)": plan.base}
    else:
        cfgs = {t.id: t.config for t in plan.runnable()}
    sources: dict[tuple[Any, ...], DataSource] = {}
    for tid, cfg in cfgs.items():
        # the seed only moves images between train and val: one check per dataset
        key = (cfg.data, cfg.val_fraction, cfg.num_classes, cfg.classes)
        if key in sources:
            sources[key].trials.append(tid)
            continue
        found: list[Any] = []
        load_trial_data(cfg, progress=sys.stderr.isatty(), on_report=found.append)
        sources[key] = DataSource([tid], found[0])
        report = found[0]
        if strict and report.issues:
            listed = f"python -m model.data check {report.root} lists every one"
            raise strict_error(report, listed)
    return list(sources.values())


def write_data_reports(study_dir: Path, sources: list[DataSource], log: Log) -> None:
    """``data_report.txt`` (every problem of every dataset) and ``data_report.json`` (per
    dataset: its trials, counts and console line) into the study folder; one line each here."""
    from study.datacheck import data_counts, data_line

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
