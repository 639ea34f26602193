"""Ray and Tune: start or join the cluster, size the trials, build (or restore) the Tuner.

Ray and Optuna are imported inside the functions, so planning and ``--dry-run`` never load them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.config import TrialConfig
from study.layout import PLAN_ID, TUNE, StudyError, optuna_url, trial_dirname
from study.running import faults, trust
from study.running.storage import TUNER_STATE, Storage, restorable
from study.running.trial import TrainFn, run_trial
from study.space.definition import Resources
from study.space.plan import Plan

Log = Callable[[str], None]
_OWNED_RAY = False  # whether this process started the Ray session (then it also stops it)


# --- Ray --------------------------------------------------------------------------------------


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While ``ray.init`` starts a local session, make Ray take 127.0.0.1 as this node's address.

    Ray binds the GCS, raylet, object manager, agents and workers to the node address it detects:
    on Linux the machine's network address, where anyone on the network can reach them. Ray's
    ``_node_ip_address="127.0.0.1"`` is turned back into that address; what makes a local
    session use 127.0.0.1 throughout is the switch behind ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    (off on macOS/Windows), read from Ray's constants when the address is detected. Checked
    after start-up by :func:`start_ray` (the address Ray reports) and by the tests (the
    listening sockets of the session's processes)."""
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before


def start_ray(address: str | None, dashboard_host: str, log: Log) -> dict[str, float]:
    """Connect to ``address`` or start a local Ray (dashboard on ``dashboard_host``, every other
    port on 127.0.0.1); returns the cluster's resources. A session already running in this
    process is reused (tests)."""
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
            auth = os.environ.get("RAY_AUTH_MODE", "token (Ray's default for local sessions)")
            log(
                f"warning: the Ray dashboard listens on {dashboard_host}: anyone who can reach "
                f"that port can try it; Ray's authentication mode is {auth} — with 'disabled' "
                "they can run code on this machine"
            )
        with _loopback_only():
            try:
                ctx = ray.init(include_dashboard=True, dashboard_host=dashboard_host, **quiet)
            except (RuntimeError, ValueError, OSError) as e:  # the dashboard's port or packages
                log(f"Ray dashboard could not start ({e}); carrying on without it")
                ctx = ray.init(include_dashboard=False, **quiet)
        node_ip = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
        if node_ip not in ("127.0.0.1", "localhost", "::1"):
            log(f"warning: this Ray version listens on {node_ip}, not only on 127.0.0.1")
    _OWNED_RAY = not address
    url = getattr(ctx, "dashboard_url", None)
    token = (
        "; it asks for the token that `ray get-auth-token` prints"
        if os.environ.get("RAY_AUTH_MODE", "token") == "token"
        else ""
    )
    log(
        f"Ray dashboard: http://{url}{token}"
        if url
        else "Ray dashboard: not available (carrying on)"
    )
    return dict(ray.cluster_resources())


def owns_ray() -> bool:
    """Whether this process started the Ray session it uses (then it also stops it)."""
    return _OWNED_RAY


def stop_ray() -> None:
    global _OWNED_RAY
    if _OWNED_RAY:
        import ray

        ray.shutdown()
        _OWNED_RAY = False


# --- trials -----------------------------------------------------------------------------------


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


def node_gpus() -> list[float]:
    """The GPUs of each live node of the Ray cluster this process is connected to."""
    import ray

    return [float(n.get("Resources", {}).get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def check_fits_a_node(res: Resources, gpus_per_node: list[float]) -> None:
    """A trial's GPUs come from one node (one bundle: its ranks run side by side), so a
    request larger than every node would wait for ever: a StudyError instead."""
    largest = max(gpus_per_node, default=0.0)
    if res.gpus > 1 and res.gpus > largest:
        raise StudyError(
            f"{res.gpus:g} GPUs per trial, but the largest node of the cluster has {largest:g}: "
            "a trial's GPUs come from one node; ask for at most that many (--gpus-per-trial)"
        )


def with_threads(cfg: TrialConfig, res: Resources) -> TrialConfig:
    """The config a trial trains with: ``threads`` 0 (as many as torch takes) becomes the trial's
    CPU share, so that the trial uses no more than Ray gave it and its best_config.yaml reruns
    with the same float sums. The config object itself travels to the trial (validated once,
    when the plan was built), never a dict to validate again."""
    if cfg.threads:
        return cfg
    return dataclasses.replace(cfg, threads=max(1, int(res.cpus)))


def with_gpus(cfg: TrialConfig, res: Resources) -> TrialConfig:
    """A trial given N ≥ 2 whole GPUs trains on all of them: ``ddp_workers`` N, one process per
    GPU (model/distributed.py), the batch split between them. Ray gives the trial its GPUs as
    one bundle on one node (CUDA_VISIBLE_DEVICES), so the ranks start together and rank k uses
    cuda:k. A fraction of a GPU shares the card with other trials (one process)."""
    gpus = res.gpus
    if gpus > 1 and gpus != int(gpus):
        raise StudyError(f"{gpus:g} GPUs per trial: more than one GPU must be a whole number")
    if gpus < 2:
        if cfg.ddp_workers > 1 and gpus > 0:
            raise StudyError(
                f"ddp_workers {cfg.ddp_workers}: a trial with {gpus:g} GPU runs one process on "
                "it; ask for as many GPUs as workers (resources: {gpus: N})"
            )
        return cfg
    workers = int(gpus)
    if cfg.ddp_workers not in (1, workers):
        raise StudyError(f"ddp_workers {cfg.ddp_workers} but {workers} GPUs per trial: "
                         "one worker per GPU")
    if cfg.batch_size % workers:
        raise StudyError(f"batch_size {cfg.batch_size} does not split over the trial's "
                         f"{workers} GPUs: make it a multiple of {workers}")
    return dataclasses.replace(cfg, ddp_workers=workers)


def trial_share(cfg: TrialConfig, res: Resources) -> TrialConfig:
    """The config as the trial runs it on its share of the node: threads and GPUs."""
    return with_gpus(with_threads(cfg, res), res)


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
    trial_ids: list[str] | None = None,
    experiment: str = TUNE,
    storage: Storage | None = None,
    callbacks: Sequence[Any] = (),
) -> None:
    """Run the trials with Ray Tune (or restore the interrupted run); returns when all ended.

    ``trial_ids``: only these planned trials (a round of ``--seeds auto``; default every
    runnable one), as the Tune experiment ``<storage>/<experiment>`` (the study's storage:
    study/running/storage.py; default the study folder); ``callbacks``: Tune callbacks
    besides the driver's own (the trackers, study/running/tracking.py)."""
    from ray import tune

    from study.running.progress import StudyCallback

    # Tune's legacy reporter is silent at verbose=0 (the new one still prints each trial
    # error's result table); our callback prints one line per trial instead, and one per crash
    # (Ray's traceback of it goes to the trial's log, not the console)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    study_dir = study_dir.resolve()
    storage = storage or Storage.for_study(study_dir, None)
    trainable = _trainable(plan, study_dir, cache_root, res, train_fn, storage)
    runnable = [t for t in plan.runnable() if trial_ids is None or t.id in set(trial_ids)]
    total = len(runnable) if not plan.space.sampled else plan.num_samples * plan.seeds
    study_id = trust.read_study_id(study_dir)  # (the registry entry of its state's digests)
    callback = StudyCallback(str(study_dir), total, trial_ids, storage, study_id)
    tuner = restored(storage, experiment, trainable, log) if resume else None
    if tuner is None:
        if not total:
            raise StudyError("nothing to run: every planned trial is skipped (see above)")
        retries = plan.space.max_failures if max_failures is None else max_failures
        tuner = tune.Tuner(
            trainable, param_space=_param_space(plan, runnable),
            tune_config=_tune_config(plan, study_dir, max_concurrent, searcher_seed),
            run_config=_run_config(experiment, retries, storage, [callback, *callbacks]),
        )
        trust.record_written(study_dir, storage, experiment, [TUNER_STATE])  # just written
    slots = f"{res.cpus:g} CPU" + (f" + {res.gpus:g} GPU" if res.gpus else "")
    log(f"running {total} trials ({slots} each); progress below, Ctrl-C stops and keeps state")
    fit(tuner, study_dir, storage, experiment, callback, log)


def restored(storage: Storage, experiment: str, trainable: Any, log: Log) -> Any:
    """The Tuner of ``experiment``'s interrupted run (the caller checked its state:
    study/running/trust.py), or None when there is none to restore."""
    from ray import tune

    tune_dir = f"{storage.tune_path}/{experiment}"
    if not restorable(storage, experiment):
        storage.remove(experiment)  # a round stopped before its first trial: start it afresh
    if not tune.Tuner.can_restore(tune_dir):
        return None
    log(
        f"restoring the Tune run in {tune_dir}: finished trials stay, the others continue "
        "from their last checkpoint"
    )
    return tune.Tuner.restore(
        tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True
    )


def fit(
    tuner: Any, study_dir: Path, storage: Storage, experiment: str, callback: Any, log: Log
) -> None:
    """``tuner.fit()`` with the driver's ``callback`` (it replaces the one a restored Tuner
    unpickled); then, however it ended, the digests of the Tune state it left are what the
    study's registry entry keeps (study/running/trust.py)."""
    from study.running.progress import serving

    t0 = time.time()
    try:
        with serving(callback):
            tuner.fit()
    finally:
        trust.record_phase(study_dir, storage, experiment)
    faults.raise_if_stopped()  # (issue 27) a full disk stopped the run: its one line
    log(f"Tune phase ended after {time.time() - t0:.1f} s")


def _trainable(
    plan: Plan, study_dir: Path, cache_root: Path, res: Resources, train_fn: TrainFn,
    storage: Storage,
) -> Any:
    """The trial function with what it needs bound (the planned configs as objects, with their
    thread share) and the resources each trial asks for."""
    from ray import tune

    trainable = tune.with_parameters(
        run_trial,
        train_fn=train_fn,
        study_dir=str(study_dir),
        plan_configs={t.id: trial_share(t.config, res) for t in plan.trials},
        base=trial_share(plan.base, res),
        cache_root=str(cache_root.resolve()),
        storage_uri=None if storage.local else storage.uri,
    )
    return tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus})


def _run_config(
    experiment: str, retries: int, storage: Storage, callbacks: Sequence[Any]
) -> Any:
    """Where Tune keeps the experiment, how often it retries a crash, which checkpoints it
    keeps, and the callbacks (the driver's own first)."""
    from ray import tune

    return tune.RunConfig(
        name=experiment,
        storage_path=storage.tune_path,
        failure_config=tune.FailureConfig(max_failures=retries),
        # last.pt per evaluation; keep 2 so one is always complete while the next copies
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # the trial's working folder holds the training function's own last.pt/best.pt:
        # Tune's checkpoints already keep last.pt, do not copy that folder to storage too
        sync_config=tune.SyncConfig(sync_artifacts=False, sync_artifacts_on_checkpoint=False),
        callbacks=list(callbacks),
        verbose=0,
    )


def _param_space(plan: Plan, runnable: list[Any]) -> dict[str, Any]:
    from ray import tune

    if plan.space.sampled:
        return {}  # the searcher proposes the sampled keys; the trainable merges the base config
    # longest first: the short trials then fill the gaps at the end, instead of one long trial
    # running alone while the other slots idle (Tune starts grid points in list order)
    order = sorted(runnable, key=lambda t: cost_estimate(t.config), reverse=True)
    return {PLAN_ID: tune.grid_search([t.id for t in order])}


def cost_estimate(cfg: TrialConfig) -> float:
    """Relative training cost: model FLOPs ~ depth × width² per pixel, × pixels × epochs."""
    from model.yolox.build import SIZES

    depth, width, _ = SIZES[cfg.size]
    return depth * width**2 * cfg.img_size**2 * cfg.epochs


def _searcher(plan: Plan, study_dir: Path, searcher_seed: int) -> Any:
    """A sampled space's search: Optuna TPE over an Optuna study in the study folder (what
    ``optuna-dashboard`` opens), each proposal repeated with the plan's seeds, each trial's value
    its chosen checkpoint's (study/running/searcher.py)."""
    import optuna

    from study.running.searcher import ChosenCheckpoint, SeedRepeater, StudyOptunaSearch

    sp = plan.space
    space = {k: d.to_optuna() for k, d in sp.sample.items() if k not in plan.pinned}
    search_alg = StudyOptunaSearch(  # (issue 27) the Optuna history a person can open
        space=space,
        metric=f"val_{sp.metric}",  # choices on validation: never on test
        mode=sp.mode,
        sampler=optuna.samplers.TPESampler(seed=searcher_seed),
        storage=optuna.storages.RDBStorage(optuna_url(study_dir)),
        study_name=study_dir.name,
        study_dir=str(study_dir),
    )
    if plan.seeds > 1:  # the same proposal with seeds 0..N-1; Optuna sees their mean
        search_alg = SeedRepeater(search_alg, repeat=plan.seeds)
    return ChosenCheckpoint(search_alg, plan.base.epochs, str(study_dir))  # the report's values


def _tune_config(
    plan: Plan, study_dir: Path, max_concurrent: int | None, searcher_seed: int
) -> Any:
    from ray import tune

    sp = plan.space
    search_alg, num_samples = None, 1
    if sp.sampled:
        search_alg = _searcher(plan, study_dir, searcher_seed)
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
            # a trial that reaches max_t ends by itself (and records done.json), not by a stop
            stop_last_trials=False,
        )
    return tune.TuneConfig(
        metric=f"val_{sp.metric}",  # ASHA's rungs and Tune's ranking: validation
        mode=sp.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        reuse_actors=True,  # a new actor per trial re-imports torch: seconds per trial on CPU
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
