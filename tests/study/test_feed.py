"""study/running/feed.py: the study's frame cache, built once before the trials, and the CPU
request."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model.config import TrialConfig
from model.data.dataset import load_dataset
from model.data.loader import open_frames
from model.data.synth import generate_flow_like
from study.running.feed import (
    LOADER_PER_CORE,
    STEP_CPU,
    STEP_CUDA_ESTIMATE,
    cores_needed,
    cpu_request_line,
    loader_rate,
    plan_frame_cache,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow_feed")
    return generate_flow_like(root, n_train=8, n_test=2, width=160, height=96, video=False)


def cfg_for(data: Path, cache: Path, **kw) -> TrialConfig:
    base = dict(data=str(data), frame_cache=True, frame_cache_dir=str(cache), img_size=96,
                size="nano", tile_size=64)
    return TrialConfig(**{**base, **kw})


def test_one_cache_for_the_study_that_every_trial_then_finds(data_dir, tmp_path):
    cache = tmp_path / "cache"
    cfgs = [cfg_for(data_dir, cache, seed=s, split_seed=s) for s in range(3)]
    lines: list[str] = []
    infos = plan_frame_cache(cfgs, lines.append)
    assert len(infos) == 1 and infos[0].built and infos[0].frames == 8  # train + val: 8 images
    assert "8 frames at 96 resolution" in lines[0] and "shared by 3 trials" in lines[0]
    for cfg in cfgs:  # each trial's own training split, whatever its hold-out, is inside
        train = load_dataset(data_dir, split_seed=cfg.split_seed).train
        frames = open_frames(train.images, cfg, progress=False)
        assert frames is not None and not frames.info.built
        assert frames.info.name == infos[0].name
    again: list[str] = []
    assert not plan_frame_cache(cfgs, again.append)[0].built and "found" in again[0]


def test_tiles_or_mixed_sizes_build_native_frames_and_off_builds_nothing(data_dir, tmp_path):
    cache = tmp_path / "cache"
    mixed = [cfg_for(data_dir, cache), cfg_for(data_dir, cache, img_size=64)]
    lines: list[str] = []
    plan_frame_cache(mixed, lines.append)
    assert "at full resolution" in lines[0]
    tiles = [cfg_for(data_dir, tmp_path / "t", input_mode="tiles")]
    plan_frame_cache(tiles, lines.append)
    assert "at full resolution" in lines[1]
    assert plan_frame_cache([cfg_for(data_dir, cache, frame_cache=False)], lines.append) == []
    assert len(lines) == 2


def test_a_disk_too_small_is_a_line_not_a_failure(data_dir, tmp_path, monkeypatch):
    import model.data.frame_cache as fc

    monkeypatch.setattr(fc, "SPACE_MARGIN", 2**60)  # no disk has an exbibyte to spare
    lines: list[str] = []
    assert plan_frame_cache([cfg_for(data_dir, tmp_path / "c")], lines.append) == []
    assert "off" in lines[0] and "frame_cache_dir" in lines[0]


def test_cores_follow_the_rates_by_hand():
    # a step of 2000 samples/s against 1395.3 per core: 0.9 * 2000 / 1395.3 = 1.29 -> 2 cores
    assert cores_needed(2000.0, 1395.3) == 2
    assert cores_needed(2000.0, 21.2) == 85  # 0.9 * 2000 / 21.2 = 84.9: decoding cannot feed
    assert cores_needed(1.0, 100.0) == 1


def test_the_cpu_request_line_names_the_demanding_trial_and_its_verdict():
    nano = TrialConfig(size="nano", img_size=640, frame_cache=True)
    small = dataclasses.replace(nano, size="s")
    line = cpu_request_line([nano, small], 4, cuda=True)
    # nano is the fastest step, so the most demanding: 2000 / 1395.3 per core -> 2 cores
    assert "nano at 640 px, plan pipeline on 1080p" in line and ": 2 loader cores" in line
    assert "estimate, not measured" in line and line.endswith("enough")
    decode = cpu_request_line([dataclasses.replace(nano, frame_cache=False)], 4, cuda=True)
    assert "decode pipeline" in decode and "too few: ask for 86" in decode
    cpu = cpu_request_line([nano], 1, cuda=False, frame_side=640)
    share = (1 / LOADER_PER_CORE[("cache", "360p")]) / (
        1 / LOADER_PER_CORE[("cache", "360p")] + 1 / STEP_CPU["nano"])
    assert f"takes {share:.0%} of a step" in cpu and "feed (CPU)" in cpu


def test_loader_rates_scale_with_the_input_area_except_decoding():
    tiles = TrialConfig(input_mode="tiles", tile_size=320, frame_cache=True)
    rate, pipeline = loader_rate(tiles, cuda=False, frame_side=1920)
    assert pipeline == "cache" and rate == pytest.approx(LOADER_PER_CORE[("cache", "1080p")] * 4)
    rate, pipeline = loader_rate(dataclasses.replace(tiles, frame_cache=False), cuda=True,
                                 frame_side=1920)
    assert pipeline == "decode" and rate == LOADER_PER_CORE[("decode", "1080p")]
    ram = dataclasses.replace(tiles, frame_cache=False, cache_images=True)
    assert loader_rate(ram, cuda=True, frame_side=640)[1] == "plan"
    assert set(STEP_CPU) == set(STEP_CUDA_ESTIMATE)
