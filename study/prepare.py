"""Before the trials: the pretraining jobs the plan needs (deduped by cache key), the COCO
weights check, the dry-run listing, and the pretraining itself as parallel Ray tasks.

Ray is imported inside the functions that use it, so ``--dry-run`` never loads it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import (
    PRETRAIN_METHODS,
    TrialConfig,
    config_from_dict,
    config_keys,
    describe_inference,
)
from study.files import atomic_write_json, atomic_write_text
from study.layout import DATA_REPORT_JSON, DATA_REPORT_TXT, StudyError
from study.plan import Plan, PretrainJob, plan_pretraining
from study.spaces import Resources

Log = Callable[[str], None]


# --- pretraining plan -------------------------------------------------------------------------


def pretraining_keys() -> set[str]:
    """Trial-config keys that change a pretraining artifact (its cache key)."""
    from model.pretrain.artifact import pretrain_settings

    keys = {"pretrain", "data", "ssl_sources"}
    for method in PRETRAIN_METHODS:
        cfg = config_from_dict({"pretrain": method, "ssl_loss": "infonce"})
        keys |= set(pretrain_settings(cfg, fingerprint="-")) & set(config_keys())
    return keys


def plan_artifacts(plan: Plan, cache_root: Path, log: Log) -> None:
    """Fill ``plan.pretrain_jobs`` (deduped by cache key); artifacts already cached get a path."""
    from study.cache import ArtifactCache

    cache = ArtifactCache(cache_root)
    if plan.space.sampled:
        b = plan.base
        searched = set(plan.space.sample) - set(plan.pinned)
        if b.pretrain not in PRETRAIN_METHODS:
            return
        touched = searched & pretraining_keys()
        if touched:
            plan.notes.append(
                f"pretraining is computed by each trial: {', '.join(sorted(touched))} "
                "is searched and changes the artifact"
            )
            return
        seeds = range(plan.seeds) if plan.seeds > 1 else [b.seed]
        for s in seeds:  # warm the cache: every sampled trial then finds its artifact there
            cfg = config_from_dict({"seed": s}, "seeded base", base=b)
            plan.pretrain_jobs.append(PretrainJob(cache.key(cfg), cfg, ["(every sampled trial)"]))
    else:
        plan_pretraining(plan, cache.key)
    for job in plan.pretrain_jobs:
        found = cache.get(job.config)
        if found is not None:
            job.path = str(found)
    if plan.pretrain_jobs:
        todo = sum(1 for j in plan.pretrain_jobs if not j.path)
        n = len(plan.pretrain_jobs)
        log(
            f"pretraining: {n} distinct artifact{'s' if n > 1 else ''}, {todo} to compute "
            f"(cache {cache_root})"
        )


def refresh_job_skips(plan: Plan) -> None:
    """A job whose every trial is skipped is skipped with them."""
    if plan.space.sampled:
        return
    for job in plan.pretrain_jobs:
        reasons = {plan.trial(i).skip for i in job.trials}
        job.skip = "" if "" in reasons else sorted(reasons)[0]


def apply_artifacts(plan: Plan) -> None:
    """Write each computed artifact path into the configs of its trials."""
    for job in plan.pretrain_jobs:
        if not job.path or plan.space.sampled:
            continue
        for tid in job.trials:
            t = plan.trial(tid)
            t.config = dataclasses.replace(t.config, pretrain_artifact=job.path)


# --- COCO weights -----------------------------------------------------------------------------


def check_coco(
    plan: Plan,
    *,
    cache_root: Path,
    download: bool,
    skip_unavailable: bool,
    probe_only: bool,
    log: Log,
) -> dict[str, bool]:
    """Make sure the COCO checkpoints the plan needs are on disk, downloading each once.

    Unavailable ones stop the study with a message saying what to fetch and where to put it, or,
    without --data (quick start) or with --skip-unavailable, skip the trials that need them.
    ``probe_only`` (dry run): no download, just mark. Returns trial id → needs a download.
    """
    from model.yolox.weights import WeightsUnavailableError, coco_cache_path, coco_url
    from study.cache import ArtifactCache, needs_download, resolve_coco_checkpoint

    cache = ArtifactCache(cache_root)
    if plan.space.sampled:
        cfgs = {f"(sampled, variant {i})": c for i, c in enumerate(_sampled_variants(plan))}
    else:
        cfgs = {t.id: t.config for t in plan.runnable()}
    need: dict[tuple[str, str], list[str]] = {}
    for tid, cfg in cfgs.items():
        if needs_download(cfg, cache):
            need.setdefault((cfg.size, cfg.coco_weights), []).append(tid)
    marks = {tid: True for ids in need.values() for tid in ids}
    if not need or probe_only:
        if need:
            then = "skips those trials" if plan.quick else "stops (or --skip-unavailable)"
            sizes = ", ".join(s for s, _ in need)
            log(f"COCO weights not on disk for YOLOX-{sizes}: a run fetches them (offline: {then})")
        return marks
    missing: dict[tuple[str, str], str] = {}
    for (size, path), _ids in sorted(need.items()):
        if not download:
            missing[(size, path)] = "downloading is off"
            continue
        try:
            resolve_coco_checkpoint(size, path or None, download=True, progress=True)
            log(f"COCO weights for YOLOX-{size} downloaded")
        except WeightsUnavailableError as e:
            missing[(size, path)] = str(e)
    if not missing:
        return marks
    lines = [
        f"  YOLOX-{size}: {coco_url(size)} -> {path or coco_cache_path(size)} "
        f"(needed by {len(need[(size, path)])} trials)"
        for size, path in sorted(missing)
    ]
    n_aff = sum(len(need[k]) for k in missing)
    if plan.space.sampled or not (plan.quick or skip_unavailable):
        flag = (
            ""
            if plan.space.sampled
            else (f" or pass --skip-unavailable to run the other {len(cfgs) - n_aff} trials")
        )
        raise StudyError(
            "the official COCO weights are needed but not on disk and cannot be downloaded "
            "(offline?):\n" + "\n".join(lines) + "\nDownload each file elsewhere and put it at "
            f"the path shown (or point --set coco_weights=PATH at it){flag}."
        )
    for (size, path), _why in missing.items():
        where = path or coco_cache_path(size)
        for tid in need[(size, path)]:
            plan.trial(
                tid
            ).skip = f"COCO weights for YOLOX-{size} unavailable (offline, not at {where})"
    why = "quick start without --data" if plan.quick else "--skip-unavailable"
    log(
        f"skipping {n_aff} trials that need COCO weights we cannot download ({why}):\n"
        + "\n".join(lines)
    )
    refresh_job_skips(plan)
    return marks


def _sampled_variants(plan: Plan) -> list[TrialConfig]:
    """The base config under every sampled choice of size/pretrain (what COCO needs can vary)."""
    variants = [plan.base]
    for key in ("size", "pretrain", "pretrain_init"):
        d = plan.space.sample.get(key)
        if d is not None and d.kind == "choice" and key not in plan.pinned:
            variants = [
                config_from_dict({key: v}, "sampled", base=c) for c in variants for v in d.values
            ]
    return variants


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


def _pretrain_task(cache_root: str, values: dict[str, Any], threads: int) -> tuple[str, float]:
    """Ray task: compute (or find) one artifact in the cache; returns (path, seconds)."""
    import torch

    from study.cache import ArtifactCache

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    cfg = config_from_dict(values, source="pretraining job")
    return str(ArtifactCache(cache_root).get_or_create(cfg, progress=False)), time.time() - t0


LEARNED = {  # what a pretraining learned, as its artifact's metrics name it
    "accuracy": "held-out bottle/background accuracy",
    "triplet_accuracy": "held-out triplet accuracy",
}


def _learned(path: str) -> str:
    """`` (held-out … accuracy 0.95)`` from the artifact's sidecar JSON ("" when absent)."""
    try:
        metrics = json.loads(Path(path).with_suffix(".json").read_text()).get("metrics", {})
    except (OSError, ValueError):
        return ""
    shown = [f"{text} {metrics[k]:.3f}" for k, text in LEARNED.items() if k in metrics]
    return f" ({', '.join(shown)})" if shown else ""


def run_pretraining(plan: Plan, cache_root: Path, res: Resources, log: Log) -> None:
    """Compute the missing artifacts as parallel Ray tasks, before any trial needs them."""
    import ray

    jobs = [j for j in plan.pretrain_jobs if not j.skip and not j.path]
    if jobs:
        task = ray.remote(_pretrain_task).options(num_cpus=res.cpus, num_gpus=res.gpus)
        refs = {
            task.remote(str(cache_root.resolve()), j.config.to_dict(), max(1, int(res.cpus))): j
            for j in jobs
        }
        log(
            f"pretraining {len(jobs)} artifacts as Ray tasks ({res.cpus:g} CPU, {res.gpus:g} GPU "
            "each, in parallel as resources allow)"
        )
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            job = refs[ready[0]]
            name = f"{job.config.pretrain}/{job.config.size}/seed{job.config.seed}"
            try:
                job.path, secs = ray.get(ready[0])
                log(f"  artifact {name} ready in {secs:.0f}s{_learned(job.path)}: {job.path}")
            except ray.exceptions.RayTaskError as e:
                job.skip = f"pretraining failed: {str(e).strip().splitlines()[-1][:200]}"
                log(f"  artifact {name} FAILED, its trials are skipped: {job.skip}")
                if not plan.space.sampled:
                    for tid in job.trials:
                        plan.trial(tid).skip = job.skip
    if plan.space.sampled and any(j.skip for j in plan.pretrain_jobs):
        raise StudyError("pretraining failed: " + "; ".join(j.skip for j in plan.pretrain_jobs))
    apply_artifacts(plan)


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
