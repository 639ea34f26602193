"""A study's pretraining jobs (center_loss / ssl backbones): planning them (one per cache key),
the rule that skips a job with its trials, computing them as parallel Ray tasks before the
trials, and applying the artifacts to the trials' configs (the pretraining CLI is
study/cli/pretrain.py; the cache itself study/artifacts/cache.py).

What the tasks produced is recorded in ``pretraining.json`` (job key → artifact path, or why
it failed), next to ``plan.json``, which is written once before them: :func:`load_study_plan`
reads the two together, so a resumed study neither recomputes an artifact nor retries a
pretraining that failed. (A plan.json written before that file existed has the paths in its
jobs: it reads the same.)

Ray is imported inside the functions that use it, so planning and ``--dry-run`` never load it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from model.config import PRETRAIN_METHODS, TrialConfig, config_from_dict, config_keys
from study.artifacts.cache import ArtifactCache
from study.files import atomic_write_json
from study.layout import PLAN, PRETRAINING, RACE, StudyError
from study.running.storage import Storage
from study.space.definition import Resources
from study.space.plan import Plan, PretrainJob, job_from_dict, load_plan, trial_from_dict
from study.space.racing import read_rounds

Log = Callable[[str], None]
Outcomes = dict[str, dict[str, str]]  # job key -> {"path": artifact, "skip": why it failed}


def pretraining_keys() -> set[str]:
    """Trial-config keys that change a pretraining artifact (its cache key)."""
    from model.pretraining.artifact import pretrain_settings

    keys = {"pretrain", "data", "ssl_sources"}
    for method in PRETRAIN_METHODS:
        cfg = config_from_dict({"pretrain": method, "ssl_loss": "infonce"})
        keys |= set(pretrain_settings(cfg, fingerprint="-")) & set(config_keys())
    return keys


def job_skip(trial_skips: Iterable[str]) -> str:
    """The skip rule: a job whose every trial is skipped is skipped with them (for the first
    reason); a job with one trial to run runs ("")."""
    reasons = set(trial_skips)
    return "" if "" in reasons or not reasons else sorted(reasons)[0]


def plan_jobs(plan: Plan, cache_root: Path, log: Log) -> tuple[list[PretrainJob], list[str]]:
    """The pretraining jobs of ``plan`` (deduped by cache key; artifacts already cached have a
    path) and the notes to add to the plan.

    Grid: the trials needing a center_loss/ssl artifact grouped by key (skipped trials' jobs
    included, marked); trials whose config already names an artifact keep it (no job). Sampled:
    one job per seed that warms the cache for every trial, unless a searched key changes the
    artifact (then each trial computes its own).
    """
    cache = ArtifactCache(cache_root)
    jobs: list[PretrainJob] = []
    if plan.space.sampled:
        b = plan.base
        searched = set(plan.space.sample) - set(plan.pinned)
        if b.pretrain not in PRETRAIN_METHODS:
            return [], []
        touched = searched & pretraining_keys()
        if touched:
            return [], [
                f"pretraining is computed by each trial: {', '.join(sorted(touched))} "
                "is searched and changes the artifact"
            ]
        seeds = range(plan.seeds) if plan.seeds > 1 else [b.seed]
        for s in seeds:  # warm the cache: every sampled trial then finds its artifact there
            cfg = config_from_dict({"seed": s}, "seeded base", base=b)
            jobs.append(PretrainJob(cache.key(cfg), cfg, ["(every sampled trial)"]))
    else:
        by_key: dict[str, PretrainJob] = {}
        for t in plan.trials:
            c = t.config
            if c.pretrain not in PRETRAIN_METHODS or c.pretrain_artifact:
                continue
            k = cache.key(c)
            by_key.setdefault(k, PretrainJob(k, c, [])).trials.append(t.id)
        for job in by_key.values():
            job.skip = job_skip(plan.trial(i).skip for i in job.trials)
        jobs = list(by_key.values())
    for job in jobs:
        found = cache.get(job.config)
        if found is not None:
            job.path = str(found)
    if jobs:
        todo = sum(1 for j in jobs if not j.path)
        n = len(jobs)
        log(
            f"pretraining: {n} distinct artifact{'s' if n > 1 else ''}, {todo} to compute "
            f"(cache {cache_root})"
        )
    return jobs, []


def with_skips(plan: Plan, skips: dict[str, str]) -> Plan:
    """``plan`` with these trials skipped (trial id → why) and its jobs' skips brought up to
    date by :func:`job_skip`."""
    if not skips:
        return plan
    trials = [dataclasses.replace(t, skip=skips.get(t.id, t.skip)) for t in plan.trials]
    skip_of = {t.id: t.skip for t in trials}
    jobs = plan.pretrain_jobs
    if not plan.space.sampled:  # (a sampled plan's jobs serve every trial)
        jobs = [
            dataclasses.replace(j, skip=job_skip(skip_of[i] for i in j.trials)) for j in jobs
        ]
    return dataclasses.replace(plan, trials=trials, pretrain_jobs=jobs)


def applied(plan: Plan, outcomes: Outcomes) -> Plan:
    """``plan`` with what the pretraining produced: each job's artifact path (or its failure,
    which skips its trials), and each computed artifact in the configs of its trials."""
    jobs = [
        dataclasses.replace(j, **outcomes[j.key]) if j.key in outcomes else j
        for j in plan.pretrain_jobs
    ]
    trials = list(plan.trials)
    if not plan.space.sampled:
        job_of = {tid: j for j in jobs for tid in j.trials}
        for n, t in enumerate(trials):
            job = job_of.get(t.id)
            if job is None:
                continue
            if job.path:
                cfg = dataclasses.replace(t.config, pretrain_artifact=job.path)
                trials[n] = dataclasses.replace(t, config=cfg)
            elif "skip" in outcomes.get(job.key, {}):  # its pretraining failed
                trials[n] = dataclasses.replace(t, skip=job.skip)
    return dataclasses.replace(plan, trials=trials, pretrain_jobs=jobs)


def _keep(path: Path, data: bytes, side: bytes) -> None:
    """The artifact a task computed, in the driver's cache (atomically; sidecar first)."""
    if path.is_file() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if side:
        path.with_suffix(".json").write_bytes(side)
    tmp = path.with_suffix(".pt.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_outcomes(study_dir: Path) -> Outcomes:
    path = Path(study_dir) / PRETRAINING
    return json.loads(path.read_text()) if path.is_file() else {}


def load_study_plan(study_dir: str | Path) -> Plan:
    """``plan.json`` with the trials ``--seeds auto`` added since (``race.json``) and what the
    pretraining produced (``pretraining.json``)."""
    study_dir = Path(study_dir)
    plan = load_plan(study_dir / PLAN)
    src = str(study_dir / RACE)
    for r in read_rounds(study_dir):
        plan.trials += [trial_from_dict(t, src) for t in r.get("trials", [])]
        plan.pretrain_jobs += [job_from_dict(j, src) for j in r.get("jobs", [])]
    return applied(plan, read_outcomes(study_dir))


def resolve_for_trial(cfg: TrialConfig, cache_root: str | Path) -> TrialConfig:
    """A trial's config with its artifact: one the plan did not compute (a sampled trial
    whose search changes the pretraining) is found in, or computed into, the cache now."""
    if cfg.pretrain in PRETRAIN_METHODS and not cfg.pretrain_artifact:
        return ArtifactCache(cache_root).resolve(cfg, progress=False)
    return cfg


def _pretrain_task(
    cache_root: str, values: dict[str, Any], threads: int
) -> tuple[str, float, bytes, bytes]:
    """Ray task: compute (or find) one artifact in the cache on ``threads`` torch threads (the
    task's CPUs; the config's ``threads``, which pretraining runs on, is not part of the cache
    key); returns (path, seconds, the artifact's bytes, its sidecar's bytes) — the task may run
    on a node whose disk the driver cannot see, so the artifact travels back through Ray."""
    t0 = time.time()
    cfg = config_from_dict({**values, "threads": max(1, threads)}, source="pretraining job")
    root = Path(cache_root)
    if not root.is_dir():  # another node: the driver's folder is not there, a local one is
        root = Path(tempfile.gettempdir()) / "yolox-flow-pretrain" / root.parent.name
    path = ArtifactCache(root).get_or_create(cfg, progress=False)
    side = path.with_suffix(".json")
    return (str(Path(cache_root) / path.name), time.time() - t0, path.read_bytes(),
            side.read_bytes() if side.is_file() else b"")


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


def run_jobs(
    plan: Plan, study_dir: Path, cache_root: Path, res: Resources, log: Log,
    storage: Storage | None = None,
) -> Outcomes:
    """Compute the missing artifacts as parallel Ray tasks, before any trial needs them.

    Returns job key → ``{"path": …}`` or ``{"skip": why}`` for the jobs computed now, each
    recorded in ``pretraining.json`` as it ends (a resume reads it: :func:`load_study_plan`).
    A failed job skips its trials; in a sampled study it stops the study.
    """
    import ray

    outcomes: Outcomes = {}
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
                path, secs, data, side = ray.get(ready[0])
                _keep(Path(path), data, side)  # (already there when it ran on this node)
                outcomes[job.key] = {"path": path}
                log(f"  artifact {name} ready in {secs:.0f}s{_learned(path)}: {path}")
            except ray.exceptions.RayTaskError as e:
                skip = f"pretraining failed: {str(e).strip().splitlines()[-1][:200]}"
                outcomes[job.key] = {"skip": skip}
                log(f"  artifact {name} FAILED, its trials are skipped: {skip}")
            atomic_write_json(study_dir / PRETRAINING, read_outcomes(study_dir) | outcomes)
    if storage is not None:  # every artifact a trial loads, where every node can fetch it
        for j in plan.pretrain_jobs:
            path = outcomes.get(j.key, {}).get("path") or j.path
            if path and Path(path).is_file():
                storage.publish_artifact(Path(path))
    if plan.space.sampled:
        failed = [outcomes.get(j.key, {}).get("skip", j.skip) for j in plan.pretrain_jobs]
        if any(failed):
            raise StudyError("pretraining failed: " + "; ".join(f for f in failed if f))
    return outcomes
