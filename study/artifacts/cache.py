"""The pretraining-artifact cache: each distinct pretraining is computed once and reused.

Artifacts live in ``<study dir>/pretrain_cache/`` (or ``$YOLOX_FLOW_CACHE/pretrain`` for a user
cache shared by studies) as ``<method>-<size>-<key>.pt``, where the key hashes
``model.pretraining.pretrain_settings(cfg)``. Creation runs under an exclusive ``fcntl`` lock per
key and the file is written atomically, so concurrent trials (or two studies) asking for the same
artifact compute it once and everyone else waits for it, and a crashed run leaves no half file.
The lock needs a filesystem where ``flock`` works across the processes involved (local disk, or a
shared one for a multi-node Ray cluster).

The COCO weights (which runs need them, fetching them) are study/artifacts/coco_weights.py's.
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
from model.pretraining.artifact import pretrain_settings, run_pretraining
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
