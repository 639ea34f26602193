"""COCO weights (study/artifacts/coco_weights.py): which runs need them, availability without
network, and the single-run check's message. The study's stop-or-skip check:
tests/study/test_study_run.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model.config import TrialConfig
from model.yolox.weights import WeightsUnavailableError
from study.artifacts.coco_weights import coco_weights_needed, needs_download, prepare_coco_weights
from tests.study import test_cache

# the cache tests' stand-in dataset and config, and their cache with a stub computation
dataset, cfg, _cache = test_cache.dataset, test_cache.cfg, test_cache._cache


def test_coco_weights_needed() -> None:
    base = TrialConfig(size="nano")
    assert not coco_weights_needed(base)
    assert coco_weights_needed(dataclasses.replace(base, pretrain="coco"))
    assert not coco_weights_needed(dataclasses.replace(base, pretrain="ssl"))
    assert coco_weights_needed(dataclasses.replace(base, pretrain="ssl", pretrain_init="coco"))
    # pretrain_init only matters for a pretraining method.
    assert not coco_weights_needed(dataclasses.replace(base, pretrain_init="coco"))


def test_coco_availability_checks_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: TrialConfig
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    coco = dataclasses.replace(cfg, pretrain="coco")
    assert needs_download(coco)
    with pytest.raises(WeightsUnavailableError, match=r"yolox_nano\.pth"):
        prepare_coco_weights([coco, cfg], download=False)
    # A center-loss trial starting from COCO needs nothing once its artifact is cached.
    cache, _ = _cache(tmp_path)
    from_coco = dataclasses.replace(cfg, pretrain_init="coco")
    assert needs_download(from_coco, cache)
    cache.get_or_create(from_coco, progress=False)
    assert not needs_download(from_coco, cache)
    weights = tmp_path / "hub" / "checkpoints" / "yolox_nano.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    assert not needs_download(coco) and prepare_coco_weights([coco], download=False) == []


