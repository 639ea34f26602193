"""The official COCO weights, for studies and single runs: which runs need them, whether they are
on disk (no network), fetching each checkpoint once, and the one line that says what to fetch
and where to put it when it cannot be had.

A study (:func:`check_study`) stops on missing weights, or skips the trials that need them
(``--skip-unavailable``, or the offline quick start); a single run (:func:`prepare_coco_weights`,
study/cli/train.py and study/cli/pretrain.py) stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from model.config import PRETRAIN_METHODS, TrialConfig, config_from_dict
from model.yolox.weights import (
    WeightsUnavailableError,
    coco_cache_path,
    coco_url,
    coco_weights_available,
    resolve_coco_checkpoint,
)
from study.artifacts.cache import ArtifactCache
from study.layout import StudyError
from study.space.plan import Plan

Log = Callable[[str], None]
Need = dict[tuple[str, str], list[str]]  # (size, cfg.coco_weights) -> the runs that need it


def coco_weights_needed(cfg: TrialConfig) -> bool:
    """Whether the trial, or the pretraining it needs, starts from the official COCO weights."""
    method = cfg.pretrain in PRETRAIN_METHODS
    return cfg.pretrain == "coco" or (method and cfg.pretrain_init == "coco")


def needs_download(cfg: TrialConfig, cache: ArtifactCache | None = None) -> bool:
    """Whether the trial needs COCO weights that are not on disk (no network access here).

    With a ``cache``, a center_loss/ssl trial whose artifact is already computed needs nothing.
    """
    if not coco_weights_needed(cfg):
        return False
    if cache is not None and cfg.pretrain in PRETRAIN_METHODS and cache.get(cfg) is not None:
        return False
    return not coco_weights_available(cfg.size, cfg.coco_weights or None)


def weights_needed(cfgs: dict[str, TrialConfig], cache: ArtifactCache | None = None) -> Need:
    """The checkpoints not on disk that the named runs need, and which runs need each."""
    need: Need = {}
    for name, cfg in cfgs.items():
        if needs_download(cfg, cache):
            need.setdefault((cfg.size, cfg.coco_weights), []).append(name)
    return need


def where_to_put(need: Need, *, counted: bool) -> str:
    """One line per checkpoint: its URL and the path to put it at (with how many trials need
    it when ``counted``)."""
    return "\n".join(
        f"  YOLOX-{size}: {coco_url(size)} -> {path or coco_cache_path(size)}"
        + (f" (needed by {len(need[(size, path)])} trials)" if counted else "")
        for size, path in sorted(need)
    )


def prepare_coco_weights(
    cfgs: Iterable[TrialConfig],
    *,
    download: bool = True,
    cache: ArtifactCache | None = None,
    progress: bool = True,
) -> list[str]:
    """Make sure every COCO checkpoint the runs need is on disk before the first one starts.

    Downloads each missing one once (into the torch hub cache) when ``download``; otherwise, or
    when a download fails, raises WeightsUnavailableError saying what to fetch and where to put
    it. Returns the sizes that were fetched.
    """
    need = weights_needed({str(i): c for i, c in enumerate(cfgs)}, cache)
    if not need:
        return []
    if not download:
        raise WeightsUnavailableError(
            "the study needs COCO checkpoints that are not on disk and downloading is off:\n"
            + where_to_put(need, counted=False)
        )
    for size, path in sorted(need):
        resolve_coco_checkpoint(size, path or None, download=True, progress=progress)
    return sorted({size for size, _ in need})


@dataclass
class CocoCheck:
    """What :func:`check_study` found: the trials whose weights are not on disk (``needs``,
    the dry run's ``needs_download``) and the trials to skip, with the reason."""

    needs: dict[str, bool] = field(default_factory=dict)
    skips: dict[str, str] = field(default_factory=dict)


def check_study(
    plan: Plan,
    *,
    cache_root: Path,
    download: bool,
    skip_unavailable: bool,
    probe_only: bool,
    log: Log,
) -> CocoCheck:
    """Make sure the COCO checkpoints the plan needs are on disk, downloading each once.

    Unavailable ones stop the study with a message saying what to fetch and where to put it, or,
    without --data (quick start) or with --skip-unavailable, skip the trials that need them.
    ``probe_only`` (dry run): no download, just mark.
    """
    cache = ArtifactCache(cache_root)
    if plan.space.sampled:
        cfgs = {f"(sampled, variant {i})": c for i, c in enumerate(_sampled_variants(plan))}
    else:
        cfgs = {t.id: t.config for t in plan.runnable()}
    need = weights_needed(cfgs, cache)
    check = CocoCheck(needs={tid: True for ids in need.values() for tid in ids})
    if not need or probe_only:
        if need:
            then = "skips those trials" if plan.quick else "stops (or --skip-unavailable)"
            sizes = ", ".join(s for s, _ in need)
            log(f"COCO weights not on disk for YOLOX-{sizes}: a run fetches them (offline: {then})")
        return check
    missing: Need = {}
    for (size, path), ids in sorted(need.items()):
        if not download:
            missing[(size, path)] = ids
            continue
        try:
            resolve_coco_checkpoint(size, path or None, download=True, progress=True)
            log(f"COCO weights for YOLOX-{size} downloaded")
        except WeightsUnavailableError:
            missing[(size, path)] = ids
    if not missing:
        return check
    lines = where_to_put(missing, counted=True)
    n_aff = sum(len(ids) for ids in missing.values())
    if plan.space.sampled or not (plan.quick or skip_unavailable):
        flag = (
            ""
            if plan.space.sampled
            else (f" or pass --skip-unavailable to run the other {len(cfgs) - n_aff} trials")
        )
        raise StudyError(
            "the official COCO weights are needed but not on disk and cannot be downloaded "
            "(offline?):\n" + lines + "\nDownload each file elsewhere and put it at "
            f"the path shown (or point --set coco_weights=PATH at it){flag}."
        )
    for (size, path), ids in missing.items():
        why = f"COCO weights for YOLOX-{size} unavailable (offline, not at "
        check.skips |= {tid: f"{why}{path or coco_cache_path(size)})" for tid in ids}
    why = "quick start without --data" if plan.quick else "--skip-unavailable"
    log(f"skipping {n_aff} trials that need COCO weights we cannot download ({why}):\n" + lines)
    return check


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
