"""The driver's steps: artifacts to plan, COCO weights, Ray start, pretraining tasks, the Tuner.

Split from ``driver.py`` to keep each file readable; ``driver.run_study`` calls them in order.
Ray and Optuna are imported inside the functions so that ``--dry-run`` never loads them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import TrialConfig, config_from_dict, config_keys
from study.plan import Plan, PretrainJob, plan_pretraining
from study.spaces import Resources
from study.trial import PLAN_ID, TrainFn, run_trial

Log = Callable[[str], None]
METHODS = ("center_loss", "ssl")
_OWNED_RAY = False  # whether this process started the Ray session (then it also stops it)


class StudyError(RuntimeError):
    """The study cannot start or go on; the message says why and what to do."""


# --- pretraining plan -------------------------------------------------------------------------


def pretraining_keys() -> set[str]:
    """Trial-config keys that change a pretraining artifact (its cache key)."""
    from model.pretrain.artifact import pretrain_settings

    keys = {"pretrain", "data", "ssl_sources"}
    for method in METHODS:
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
        if b.pretrain not in METHODS:
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
        log(
            f"pretraining: {len(plan.pretrain_jobs)} distinct artifacts, {todo} to compute "
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
    import dataclasses

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
            "needs_download": needs.get(t.id, False),
            "pretrain_job": key_of.get(t.id),
        }
        rec["config"] = rec.pop("config")  # last: the long part
        print(json.dumps(rec))
    for j in plan.pretrain_jobs:
        print(json.dumps({"kind": "pretrain", **j.to_dict()}))
    sys.stdout.flush()


# --- Ray --------------------------------------------------------------------------------------


def start_ray(address: str | None, dashboard_host: str, log: Log) -> dict[str, float]:
    """Connect to ``address`` or start a local Ray (dashboard on ``dashboard_host``); returns the
    cluster's resources. A session already running in this process is reused (tests)."""
    global _OWNED_RAY
    import ray

    if ray.is_initialized():
        log("using the Ray session already running in this process")
        return dict(ray.cluster_resources())
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        try:
            ctx = ray.init(address=address, **quiet)
        except ConnectionError as e:
            auth = os.environ.get("RAY_AUTH_MODE", "unset")
            raise StudyError(
                f"cannot connect to the Ray cluster at {address} ({e}). Ray turns token "
                "authentication on for clusters it starts, but never for an explicit address: "
                f"run with RAY_AUTH_MODE=token (now {auth}) and the cluster's token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from e
        log(f"connected to the Ray cluster at {address}")
    else:
        if dashboard_host not in ("127.0.0.1", "localhost"):
            log(
                f"warning: the Ray dashboard listens on {dashboard_host}: anyone who can reach "
                "that port sees the cluster and, unless Ray token authentication is on, can run "
                "code on it"
            )
        try:
            ctx = ray.init(include_dashboard=True, dashboard_host=dashboard_host, **quiet)
        except (RuntimeError, ValueError, OSError) as e:  # the dashboard's port or its packages
            log(f"Ray dashboard could not start ({e}); carrying on without it")
            ctx = ray.init(include_dashboard=False, **quiet)
    _OWNED_RAY = not address
    url = getattr(ctx, "dashboard_url", None)
    log(f"Ray dashboard: http://{url}" if url else "Ray dashboard: not available (carrying on)")
    return dict(ray.cluster_resources())


def stop_ray() -> None:
    global _OWNED_RAY
    if _OWNED_RAY:
        import ray

        ray.shutdown()
        _OWNED_RAY = False


def _pretrain_task(cache_root: str, values: dict[str, Any], threads: int) -> tuple[str, float]:
    """Ray task: compute (or find) one artifact in the cache; returns (path, seconds)."""
    import torch

    from study.cache import ArtifactCache

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    cfg = config_from_dict(values, source="pretraining job")
    return str(ArtifactCache(cache_root).get_or_create(cfg, progress=False)), time.time() - t0


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
                log(f"  artifact {name} ready in {secs:.0f}s: {job.path}")
            except ray.exceptions.RayTaskError as e:
                job.skip = f"pretraining failed: {str(e).strip().splitlines()[-1][:200]}"
                log(f"  artifact {name} FAILED, its trials are skipped: {job.skip}")
                if not plan.space.sampled:
                    for tid in job.trials:
                        plan.trial(tid).skip = job.skip
    if plan.space.sampled and any(j.skip for j in plan.pretrain_jobs):
        raise StudyError("pretraining failed: " + "; ".join(j.skip for j in plan.pretrain_jobs))
    apply_artifacts(plan)


# --- trials -----------------------------------------------------------------------------------


def trial_dirname(trial: Any) -> str:
    """Tune trial name and folder: the planned id (grid) or ``trial-<tune id>`` (sampled)."""
    return trial.config.get(PLAN_ID) or f"trial-{trial.trial_id}"


def effective_resources(
    plan: Plan,
    cpus_flag: float | None,
    gpus_flag: float | None,
    cluster: dict[str, float],
    log: Log,
) -> Resources:
    """Per-trial CPUs/GPUs: the flags, else the space (its quick block without --data), checked
    against the cluster so that no trial waits forever for a GPU that does not exist."""
    cpus = cpus_flag if cpus_flag is not None else plan.resources.cpus
    gpus = gpus_flag if gpus_flag is not None else plan.resources.gpus
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if gpus > 0 and have_gpu == 0:
        if gpus_flag is not None:
            raise StudyError(f"--gpus-per-trial {gpus:g}: the Ray cluster has no GPU")
        log(f"no GPU in the Ray cluster: trials run on CPU (the space asks for {gpus:g} GPU each)")
        gpus = 0.0
    if gpus > have_gpu > 0:
        raise StudyError(f"{gpus:g} GPUs per trial but the cluster has {have_gpu:g}")
    if cpus > have_cpu:
        if cpus_flag is not None:
            raise StudyError(f"--cpus-per-trial {cpus:g}: the Ray cluster has {have_cpu:g} CPUs")
        log(f"{cpus:g} CPUs per trial asked, the cluster has {have_cpu:g}: using {have_cpu:g}")
        cpus = have_cpu
    return Resources(cpus=cpus, gpus=gpus)


def run_trials(
    plan: Plan,
    study_dir: Path,
    cache_root: Path,
    res: Resources,
    train_fn: TrainFn,
    *,
    resume: bool,
    max_concurrent: int | None,
    max_failures: int | None,
    searcher_seed: int,
    log: Log,
) -> None:
    """Run the trials with Ray Tune (or restore the interrupted run); returns when all ended."""
    from ray import tune

    from study.progress import StudyCallback

    # Tune's legacy reporter is silent at verbose=0 (the new one still prints each trial
    # error's result table); our callback prints one line per trial instead
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    study_dir = study_dir.resolve()
    trainable = tune.with_parameters(
        run_trial,
        train_fn=train_fn,
        study_dir=str(study_dir),
        plan_configs={t.id: t.config.to_dict() for t in plan.trials},
        base=plan.base.to_dict(),
        cache_root=str(cache_root.resolve()),
        threads=max(1, int(res.cpus)),
    )
    trainable = tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus})
    tune_dir = study_dir / "tune"
    total = len(plan.runnable()) if not plan.space.sampled else plan.num_samples * plan.seeds
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        log(
            f"restoring the Tune run in {tune_dir}: finished trials stay, the others continue "
            "from their last checkpoint"
        )
        tuner = tune.Tuner.restore(
            str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if not total:
            raise StudyError("nothing to run: every planned trial is skipped (see above)")
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(plan),
            tune_config=_tune_config(plan, study_dir, max_concurrent, searcher_seed),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(study_dir),
                failure_config=tune.FailureConfig(
                    max_failures=plan.space.max_failures if max_failures is None else max_failures
                ),
                # last.pt per evaluation; keep 2 so one is always complete while the next copies
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # the trial's working folder holds the training function's own last.pt/best.pt:
                # Tune's checkpoints already keep last.pt, do not copy that folder to storage too
                sync_config=tune.SyncConfig(
                    sync_artifacts=False, sync_artifacts_on_checkpoint=False
                ),
                callbacks=[StudyCallback(str(study_dir), total)],
                verbose=0,
            ),
        )
    slots = f"{res.cpus:g} CPU" + (f" + {res.gpus:g} GPU" if res.gpus else "")
    log(f"running {total} trials ({slots} each); progress below, Ctrl-C stops and keeps state")
    tuner.fit()


def _param_space(plan: Plan) -> dict[str, Any]:
    from ray import tune

    if plan.space.sampled:
        return {}  # the searcher proposes the sampled keys; the trainable merges the base config
    return {PLAN_ID: tune.grid_search([t.id for t in plan.runnable()])}


def _tune_config(
    plan: Plan, study_dir: Path, max_concurrent: int | None, searcher_seed: int
) -> Any:
    from ray import tune

    sp = plan.space
    search_alg, num_samples = None, 1
    if sp.sampled:
        import optuna
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        space = {k: d.to_optuna() for k, d in sp.sample.items() if k not in plan.pinned}
        search_alg = OptunaSearch(
            space=space,
            metric=sp.metric,
            mode=sp.mode,
            sampler=optuna.samplers.TPESampler(seed=searcher_seed),
            storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.sqlite'}"),
            study_name=study_dir.name,
        )
        if plan.seeds > 1:  # the same proposal with seeds 0..N-1; Optuna sees their mean
            search_alg = Repeater(search_alg, repeat=plan.seeds)
        num_samples = plan.num_samples * plan.seeds
    scheduler = None
    if sp.scheduler.kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        asked = sp.scheduler.max_t or plan.base.epochs
        max_t = min(asked, plan.base.epochs)
        # the quick profile trains a few epochs: shrink the rungs with it, keeping their shape
        grace = max(1, round(sp.scheduler.grace_period * max_t / asked))
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=max_t,
            grace_period=min(grace, max_t),
            reduction_factor=sp.scheduler.reduction_factor,
        )
    return tune.TuneConfig(
        metric=sp.metric,
        mode=sp.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        reuse_actors=True,  # a new actor per trial re-imports torch: seconds per trial on CPU
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
