"""The pretraining-artifact cache: each distinct pretraining is computed once and reused.

Artifacts live in ``<study dir>/pretrain_cache/`` (or ``$YOLOX_FLOW_CACHE/pretrain`` for a user
cache shared by studies) as ``<method>-<size>-<key>.pt``, where the key hashes
``model.pretrain.pretrain_settings(cfg)``. Creation runs under an exclusive ``fcntl`` lock per key
and the file is written atomically, so concurrent trials (or two studies) asking for the same
artifact compute it once and everyone else waits for it, and a crashed run leaves no half file.
The lock needs a filesystem where ``flock`` works across the processes involved (local disk, or a
shared one for a multi-node Ray cluster).

Also here: the COCO-weights checks the driver runs before the first trial.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from model.config import PRETRAIN_METHODS, TrialConfig
from model.pretrain.artifact import pretrain_settings, run_pretraining
from model.yolox.weights import (
    WeightsUnavailableError,
    coco_cache_path,
    coco_url,
    coco_weights_available,
    resolve_coco_checkpoint,
)
from study.files import atomic_write_json

# compute(cfg, out_path, progress=...) -> metrics; run_pretraining unless a test swaps it.
Compute = Callable[..., dict[str, float]]


def default_cache_root(study_dir: str | Path | None = None) -> Path:
    """``<study_dir>/pretrain_cache``; without a study, ``$YOLOX_FLOW_CACHE/pretrain`` or
    ``~/.cache/yolox-flow-study/pretrain``."""
    if study_dir is not None:
        return Path(study_dir) / "pretrain_cache"
    base = os.environ.get("YOLOX_FLOW_CACHE") or Path.home() / ".cache" / "yolox-flow-study"
    return Path(base) / "pretrain"


def settings_key(settings: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ArtifactCache:
    """Pretraining artifacts under ``root``, one per distinct ``pretrain_settings``."""

    def __init__(self, root: str | Path, *, compute: Compute | None = None) -> None:
        self.root = Path(root)
        self._compute = compute or run_pretraining

    def key(self, cfg: TrialConfig) -> str:
        """The cache key of ``cfg``'s artifact (reads the data fingerprint)."""
        return settings_key(pretrain_settings(cfg))

    def _path_for(self, cfg: TrialConfig, key: str) -> Path:
        return self.root / f"{cfg.pretrain}-{cfg.size}-{key}.pt"

    def path(self, cfg: TrialConfig) -> Path:
        """Where ``cfg``'s artifact is (or will be) stored."""
        return self._path_for(cfg, self.key(cfg))

    def get(self, cfg: TrialConfig) -> Path | None:
        """The artifact's path if it is already computed, else None. Never computes."""
        path = self.path(cfg)
        return path if path.is_file() else None

    def get_or_create(self, cfg: TrialConfig, *, progress: bool = True) -> Path:
        """The artifact's path, computing it first when missing (once, under a lock per key)."""
        settings = pretrain_settings(cfg)
        key = settings_key(settings)
        path = self._path_for(cfg, key)
        if path.is_file():
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process computes this key
            try:
                if not path.is_file():  # someone may have finished it while we waited
                    metrics = self._compute(cfg, path, progress=progress)
                    self._write_sidecar(path, settings, metrics)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return path

    @staticmethod
    def _write_sidecar(path: Path, settings: dict[str, Any], metrics: dict[str, float]) -> None:
        """``<artifact>.json``: settings and figures, for people browsing the cache."""
        side = path.with_suffix(".json")
        atomic_write_json(side, {"settings": settings, "metrics": metrics}, indent=2)

    def resolve(self, cfg: TrialConfig, *, progress: bool = True) -> TrialConfig:
        """``cfg`` with ``pretrain_artifact`` filled in for center_loss/ssl (computed if needed).

        none/coco trials come back unchanged. An artifact the user set that lies outside this
        cache is kept (their explicit choice); one inside it is re-derived from the settings, so
        a search that varies a pretraining setting never reuses a stale path.
        """
        if cfg.pretrain not in PRETRAIN_METHODS:
            return cfg
        if cfg.pretrain_artifact and not self._inside(Path(cfg.pretrain_artifact)):
            if not Path(cfg.pretrain_artifact).is_file():
                raise FileNotFoundError(
                    f"pretrain_artifact {cfg.pretrain_artifact} does not exist; clear the key to "
                    "have the study compute the artifact"
                )
            return cfg
        path = self.get_or_create(cfg, progress=progress)
        return dataclasses.replace(cfg, pretrain_artifact=str(path))

    def prepare(self, cfgs: Iterable[TrialConfig], *, progress: bool = True) -> dict[str, Path]:
        """Compute every distinct artifact the configs need, once each; key -> path."""
        done: dict[str, Path] = {}
        for cfg in cfgs:
            if cfg.pretrain in PRETRAIN_METHODS:
                key = self.key(cfg)
                if key not in done:
                    done[key] = self.get_or_create(cfg, progress=progress)
        return done

    def _inside(self, path: Path) -> bool:
        return path.resolve().parent == self.root.resolve()


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


def prepare_coco_weights(
    cfgs: Iterable[TrialConfig],
    *,
    download: bool = True,
    cache: ArtifactCache | None = None,
    progress: bool = True,
) -> list[str]:
    """Make sure every COCO checkpoint the trials need is on disk before the first trial runs.

    Downloads each missing one once (into the torch hub cache) when ``download``; otherwise, or
    when a download fails, raises WeightsUnavailableError listing every missing checkpoint with
    its URL and where to put it. Returns the sizes that were fetched.
    """
    missing: dict[tuple[str, str], TrialConfig] = {}
    for cfg in cfgs:
        if needs_download(cfg, cache):
            missing.setdefault((cfg.size, cfg.coco_weights), cfg)
    if not missing:
        return []
    if not download:
        lines = [
            f"  YOLOX-{size}: {coco_url(size)} -> {path or coco_cache_path(size)}"
            for size, path in sorted(missing)
        ]
        raise WeightsUnavailableError(
            "the study needs COCO checkpoints that are not on disk and downloading is off:\n"
            + "\n".join(lines)
        )
    for size, path in sorted(missing):
        resolve_coco_checkpoint(size, path or None, download=True, progress=progress)
    return sorted({size for size, _ in missing})
