"""The pretraining-artifact cache: keys, hits and misses, concurrency, resolve.

The computation is replaced by a stub that writes a small file and counts its calls, so these
tests are about the cache; tests/model/pretrain/test_pretrain_methods.py runs the real pretraining.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from model.config import TrialConfig
from model.pretraining import data_fingerprint, pretrain_settings
from study.artifacts.cache import ArtifactCache, default_cache_root


def _stub_compute(
    cfg: TrialConfig, path: Path, *, progress: bool, counter: str, delay: float = 0.0
) -> dict[str, float]:
    """Counts its calls in ``counter`` (one line each), then writes ``path`` atomically."""
    with open(counter, "a") as f:
        f.write(f"{cfg.pretrain}\n")
    time.sleep(delay)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("artifact")
    tmp.replace(path)
    return {"accuracy": 1.0}


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A stand-in dataset folder: the key only reads file names, sizes and annotation bytes."""
    root = tmp_path / "data"
    (root / "training" / "images").mkdir(parents=True)
    (root / "training" / "annotations").mkdir()
    for i in range(3):
        (root / "training" / "images" / f"{i}.jpg").write_bytes(b"\xff" * (100 + i))
        (root / "training" / "annotations" / f"{i}.xml").write_text(f"<annotation>{i}</annotation>")
    return root


@pytest.fixture
def cfg(dataset: Path) -> TrialConfig:
    return TrialConfig(pretrain="center_loss", size="nano", data=str(dataset))


def _cache(tmp_path: Path, delay: float = 0.0) -> tuple[ArtifactCache, Path]:
    counter = tmp_path / "calls.txt"
    compute = functools.partial(_stub_compute, counter=str(counter), delay=delay)
    return ArtifactCache(tmp_path / "cache", compute=compute), counter


def test_miss_then_hit_and_reuse_by_a_resumed_study(tmp_path: Path, cfg: TrialConfig) -> None:
    cache, counter = _cache(tmp_path)
    assert cache.get(cfg) is None
    path = cache.get_or_create(cfg, progress=False)
    assert path.is_file() and path.parent == tmp_path / "cache" and _calls(counter) == 1
    assert path.name == f"center_loss-nano-{cache.key(cfg)}.pt"
    assert cache.get(cfg) == path
    assert cache.get_or_create(cfg, progress=False) == path and _calls(counter) == 1
    again, _ = _cache(tmp_path)  # a new process over the same folder (a resumed study)
    assert again.get_or_create(cfg, progress=False) == path and _calls(counter) == 1
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["settings"] == pretrain_settings(cfg) and side["metrics"] == {"accuracy": 1.0}


def _worker(root: str, counter: str, cfg: TrialConfig) -> str:
    compute = functools.partial(_stub_compute, counter=counter, delay=1.0)
    return str(ArtifactCache(root, compute=compute).get_or_create(cfg, progress=False))


def test_concurrent_requests_compute_the_artifact_once(tmp_path: Path, cfg: TrialConfig) -> None:
    root, counter = str(tmp_path / "cache"), str(tmp_path / "calls.txt")
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        paths = pool.starmap(_worker, [(root, counter, cfg)] * 3)
    assert len(set(paths)) == 1 and Path(paths[0]).is_file()
    assert _calls(Path(counter)) == 1
    # A different setting is a different artifact, computed separately.
    other = dataclasses.replace(cfg, crop_size=96)
    assert _worker(root, counter, other) != paths[0] and _calls(Path(counter)) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"pretrain": "ssl"},
        {"size": "tiny"},
        {"pretrain_init": "coco"},
        {"pretrain_epochs": 3},
        {"pretrain_batch_size": 8},
        {"pretrain_lr": 0.02},
        {"crop_size": 96},
        {"center_loss_weight": 0.0},
        {"center_lr": 0.1},
        {"seed": 1},
    ],
)
def test_key_changes_with_a_pretraining_setting(cfg: TrialConfig, change: dict[str, Any]) -> None:
    cache = ArtifactCache("unused")
    assert cache.key(dataclasses.replace(cfg, **change)) != cache.key(cfg)


@pytest.mark.parametrize(
    "change",
    [
        {"reg_loss": "ciou"},
        {"img_size": 416},
        {"epochs": 20},
        {"lr": 0.02},
        {"batch_size": 4},
        {"mosaic_prob": 0.0},
        {"device": "cpu"},
        {"ssl_temperature": 0.5},  # an ssl setting does not touch a center-loss artifact
        {"pretrain_artifact": "/somewhere/else.pt"},
        {"threads": 1},  # a study's task and a single run find each other's artifact
    ],
)
def test_key_ignores_detector_only_settings(cfg: TrialConfig, change: dict[str, Any]) -> None:
    cache = ArtifactCache("unused")
    assert cache.key(dataclasses.replace(cfg, **change)) == cache.key(cfg)


def test_ssl_key_follows_its_own_settings_and_extra_sources(
    cfg: TrialConfig, tmp_path: Path
) -> None:
    ssl = dataclasses.replace(cfg, pretrain="ssl", ssl_loss="infonce")
    cache = ArtifactCache("unused")
    for change in ({"ssl_temperature": 0.5}, {"ssl_patch_size": 96}, {"ssl_video_every": 5}):
        assert cache.key(dataclasses.replace(ssl, **change)) != cache.key(ssl)
    assert cache.key(dataclasses.replace(ssl, crop_size=96)) == cache.key(ssl)
    extra = tmp_path / "frames"
    extra.mkdir()
    (extra / "a.jpg").write_bytes(b"1234")
    assert cache.key(dataclasses.replace(ssl, ssl_sources=str(extra))) != cache.key(ssl)


def test_fingerprint_reads_annotations_and_file_sizes_not_location(
    dataset: Path, tmp_path: Path
) -> None:
    fp = data_fingerprint(dataset)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(dataset, copy)
    (copy / ".lock").write_text("")  # lock files come and go
    assert data_fingerprint(copy) == fp
    (copy / "training" / "annotations" / "0.xml").write_text("<annotation>9</annotation>")
    assert data_fingerprint(copy) != fp  # same size, new content: relabelled
    shutil.copytree(dataset, tmp_path / "c2")
    (tmp_path / "c2" / "training" / "images" / "3.jpg").write_bytes(b"x")
    assert data_fingerprint(tmp_path / "c2") != fp  # one more image


def test_resolve_fills_the_artifact_only_for_pretraining_methods(
    tmp_path: Path, cfg: TrialConfig
) -> None:
    cache, counter = _cache(tmp_path)
    for pretrain in ("none", "coco"):
        plain = dataclasses.replace(cfg, pretrain=pretrain)
        assert cache.resolve(plain) is plain
    resolved = cache.resolve(cfg, progress=False)
    assert resolved.pretrain_artifact == str(cache.path(cfg)) and _calls(counter) == 1
    assert dataclasses.replace(resolved, pretrain_artifact="") == cfg
    # A stale path inside the cache (a varied setting) is re-derived, not reused.
    varied = dataclasses.replace(resolved, crop_size=96)
    assert cache.resolve(varied, progress=False).pretrain_artifact == str(cache.path(varied))
    # The user's own artifact elsewhere is kept; a missing one is an error naming it.
    own = tmp_path / "mine.pt"
    own.write_text("x")
    mine = dataclasses.replace(cfg, pretrain_artifact=str(own))
    assert cache.resolve(mine) is mine
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        cache.resolve(dataclasses.replace(cfg, pretrain_artifact=str(tmp_path / "nope.pt")))


def test_prepare_computes_each_distinct_artifact_once(tmp_path: Path, cfg: TrialConfig) -> None:
    cache, counter = _cache(tmp_path)
    cfgs = [
        cfg,
        dataclasses.replace(cfg, reg_loss="ciou"),  # shares cfg's artifact
        dataclasses.replace(cfg, pretrain="ssl"),
        dataclasses.replace(cfg, pretrain="coco"),  # needs none
    ]
    assert len(cache.prepare(cfgs, progress=False)) == 2 and _calls(counter) == 2


def test_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_root(tmp_path / "study") == tmp_path / "study" / "pretrain_cache"
    monkeypatch.setenv("YOLOX_FLOW_CACHE", str(tmp_path / "user"))
    assert default_cache_root() == tmp_path / "user" / "pretrain"
