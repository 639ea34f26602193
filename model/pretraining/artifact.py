"""The pretraining artifact: what it holds, what identifies it, how it is written and read.

An artifact is a ``.pt`` dict, loadable with ``torch.load(..., weights_only=True)``::

    {"method": "center_loss" | "ssl", "size": "s", "backbone": CSPDarknet state_dict,
     "metrics": {name: float}, "settings": pretrain_settings(cfg), "data_fingerprint": str,
     "format_version": 1}

``pretrain_settings`` holds every setting that changes the artifact and nothing else (no detector
settings such as reg_loss or img_size), so trials that differ only in those share one artifact.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.checkpoint import NotWeightsOnlyError, load_weights_only
from model.config import PRETRAIN_METHODS, TrialConfig
from model.data.raw import SPLIT_RULE
from model.pretraining.center_loss import pretrain_center_loss
from model.pretraining.common import PretrainingError
from model.pretraining.sources import cfg_fingerprint, train_split, unlabeled_frames
from model.pretraining.ssl import pretrain_ssl
from model.threads import torch_threads
from model.yolox import LoadReport, load_backbone_state

FORMAT_VERSION = 1
# Bump when the training procedure changes what an artifact holds for the same settings, so
# that caches made by older code are not reused.
ALGORITHM_VERSION = 1
METHODS = PRETRAIN_METHODS


class ArtifactError(PretrainingError):
    """A file is not a usable pretraining artifact; the message names the file and the problem."""


def _check_method(cfg: TrialConfig) -> None:
    if cfg.pretrain not in METHODS:
        raise ValueError(
            f"pretrain {cfg.pretrain!r} has no pretraining artifact; artifacts exist for "
            f"{', '.join(map(repr, METHODS))} (none and coco need no pretraining run)"
        )


def pretrain_settings(cfg: TrialConfig, *, fingerprint: str | None = None) -> dict[str, Any]:
    """Every setting that changes the artifact of ``cfg`` (its cache key), JSON-serialisable.

    Method-specific keys appear only for their method (a center-loss artifact does not depend on
    ssl_temperature); ``fingerprint`` skips recomputing the data fingerprint when known.
    """
    _check_method(cfg)
    s: dict[str, Any] = {
        "method": cfg.pretrain,
        "size": cfg.size,
        "pretrain_init": cfg.pretrain_init,
        "pretrain_epochs": cfg.pretrain_epochs,
        "pretrain_batch_size": cfg.pretrain_batch_size,
        "pretrain_lr": cfg.pretrain_lr,
        "seed": cfg.seed,
        # the validation hold-out decides which images are training images (issue 23: held out
        # of every layout without a val split, FloW's and the embedded data's included)
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
        "split_rule": SPLIT_RULE,
        "format_version": FORMAT_VERSION,
        "algorithm_version": ALGORITHM_VERSION,
    }
    if cfg.pretrain == "center_loss":
        if cfg.classes:  # only when set, so the keys of artifacts made before it stay valid
            s["classes"] = cfg.classes  # the boxes the crops come from
        s["crop_size"] = cfg.crop_size
        s["center_loss_weight"] = cfg.center_loss_weight
        if cfg.center_loss_weight > 0:  # the centres' lr is unused by the CE-only ablation
            s["center_lr"] = cfg.center_lr
    else:
        s["ssl_patch_size"] = cfg.ssl_patch_size
        s["ssl_loss"] = cfg.ssl_loss
        if cfg.ssl_loss == "infonce":  # the cosine loss has no temperature
            s["ssl_temperature"] = cfg.ssl_temperature
        s["ssl_video_every"] = cfg.ssl_video_every
        s["ssl_triplets_per_frame"] = cfg.ssl_triplets_per_frame
    s["data_fingerprint"] = fingerprint if fingerprint is not None else cfg_fingerprint(cfg)
    return s


def run_pretraining(
    cfg: TrialConfig, out_path: str | Path, *, progress: bool = True
) -> dict[str, float]:
    """Pretrain the backbone for ``cfg.pretrain`` and write the artifact to ``out_path``.

    Written atomically (a temporary file in the same folder, then ``os.replace``), so a reader
    sees either no file or a complete one. Returns the figures (also stored as "metrics").
    """
    _check_method(cfg)
    out_path = Path(out_path)
    settings = pretrain_settings(cfg)
    with torch_threads(cfg.threads):  # the trial's thread count: the same artifact everywhere
        if cfg.pretrain == "center_loss":
            images, annotations, source = train_split(cfg, progress=progress)
            state, metrics = pretrain_center_loss(
                cfg, images, annotations, source, progress=progress
            )
        else:
            frames = unlabeled_frames(cfg, progress=progress)
            state, metrics = pretrain_ssl(cfg, frames, progress=progress)
    artifact = {
        "method": cfg.pretrain,
        "size": cfg.size,
        "backbone": state,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "settings": settings,
        "data_fingerprint": settings["data_fingerprint"],
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_artifact(artifact, out_path)
    return artifact["metrics"]


def save_artifact(artifact: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, then rename over ``path`` (atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(artifact, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_artifact(path: str | Path, *, size: str | None = None) -> dict[str, Any]:
    """Read and check an artifact (weights_only). ``size``, when given, must match its size."""
    path = Path(path)
    try:
        art = load_weights_only(path)
    except FileNotFoundError as e:
        raise ArtifactError(f"pretraining artifact {path} does not exist") from e
    except OSError as e:
        raise ArtifactError(f"cannot read pretraining artifact {path}: {e}") from e
    except NotWeightsOnlyError as e:
        raise ArtifactError(
            f"pretraining artifact {path} is not a weights-only checkpoint ({e}); pass a .pt "
            "written by study/cli/pretrain.py, or clear pretrain_artifact to have the study "
            "compute it"
        ) from e
    if not isinstance(art, dict) or not isinstance(art.get("backbone"), dict):
        raise ArtifactError(f"{path} is not a pretraining artifact (no 'backbone' state_dict)")
    if art.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format_version {art.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; recompute it (delete the file)"
        )
    if size is not None and art.get("size") != size:
        raise ArtifactError(
            f"{path} holds a YOLOX-{art.get('size')} backbone but the trial is YOLOX-{size}; "
            "use an artifact of the trial's size"
        )
    return art


def load_pretrained_backbone(net: nn.Module, path: str | Path, size: str) -> LoadReport:
    """Load an artifact's backbone into ``net`` (a YOLOX of ``size``); the report counts tensors.

    A thin checked wrapper around ``model.yolox.load_backbone_state`` for the trainer: it checks
    the artifact's size first, so a mismatch names the file rather than the first bad tensor.
    """
    art = load_artifact(path, size=size)
    state: dict[str, Tensor] = art["backbone"]
    return load_backbone_state(net, state, source=str(path))
