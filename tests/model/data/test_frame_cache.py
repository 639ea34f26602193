"""The node's decoded-frame cache (model/data/frame_cache.py): round trips, one build, safety."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import model.data.frame_cache as fc
from model.config import TrialConfig
from model.data.frame_cache import (
    FrameCacheSpaceError,
    estimate_bytes,
    fitted_size,
    open_frame_cache,
)
from model.data.loader import SplitImages, build_train_loader, open_frames
from model.data.transforms import read_image, resize_to_fit
from tests.model.data.test_loader import make_split as _make_split


def make_split(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    return _make_split(root)


SIZES = [(48, 64), (90, 160), (33, 20)]  # (h, w): landscape, 16:9, portrait


def write_frames(root: Path, sizes=SIZES, seed: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, (h, w) in enumerate(sizes):
        path = root / f"f{k}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


def test_a_native_cache_serves_the_decoded_pixels_and_its_files_load_without_pickle(tmp_path):
    paths = write_frames(tmp_path / "data")
    frames = open_frame_cache(paths, SIZES, 0, tmp_path / "cache", progress=False)
    assert frames.info.built and frames.info.frames == 3
    assert frames.info.bytes == 3 * sum(h * w for h, w in SIZES) == estimate_bytes(SIZES, 0)
    for k, p in enumerate(paths):
        got = frames.frame(k)
        assert np.array_equal(got, read_image(p)) and not got.flags.writeable
        assert frames.original_size(k) == SIZES[k]
    base = tmp_path / "cache" / frames.info.name
    assert frames.info.name.startswith("frames-") and frames.info.name.endswith("-full")
    index = np.load(str(base) + ".index.npy", allow_pickle=False)
    assert index[:, 0].tolist() == [0, 48 * 64 * 3, 48 * 64 * 3 + 90 * 160 * 3]
    manifest = json.loads(base.with_suffix(".json").read_text())
    assert manifest["digests"] == [fc.file_digest(p) for p in paths]


def test_a_fit_cache_holds_exactly_the_letterbox_sources_pixels(tmp_path):
    paths = write_frames(tmp_path / "data")
    frames = open_frame_cache(paths, SIZES, 32, tmp_path / "cache", progress=False)
    assert frames.info.name.endswith("-32")
    # hand-worked: 90x160 fit to 32 -> r = 0.2 -> 18x32; 33x20 -> r = 32/33 -> 32x19
    assert fitted_size(90, 160, 32) == (18, 32) and fitted_size(33, 20, 32) == (32, 19)
    for k, p in enumerate(paths):
        assert np.array_equal(frames.frame(k), resize_to_fit(read_image(p), 32)[0])


def test_the_same_content_finds_the_cache_and_changed_content_builds_another(tmp_path):
    cache = tmp_path / "cache"
    paths = write_frames(tmp_path / "a")
    first = open_frame_cache(paths, SIZES, 0, cache, progress=False)
    copies = [shutil.copy(p, tmp_path / f"copy{k}.png") for k, p in enumerate(paths)]
    again = open_frame_cache(copies, SIZES, 0, cache, progress=False)
    assert not again.info.built and again.info.name == first.info.name  # content, not paths
    subset = open_frame_cache(paths[1:], SIZES[1:], 0, cache, progress=False)
    assert not subset.info.built and subset.info.name == first.info.name  # a superset serves
    assert np.array_equal(subset.frame(0), read_image(paths[1]))
    letterbox = open_frame_cache(paths, SIZES, 64, cache, progress=False)
    assert not letterbox.info.built and letterbox.fit == 0  # full serves a fit request
    changed = write_frames(tmp_path / "b", seed=1)
    other = open_frame_cache(changed, SIZES, 0, cache, progress=False)
    assert other.info.built and other.info.name != first.info.name


def test_the_store_pickles_as_its_path_not_its_pixels(tmp_path):
    paths = write_frames(tmp_path / "data", sizes=[(200, 300)] * 2)
    frames = open_frame_cache(paths, [(200, 300)] * 2, 0, tmp_path / "cache", progress=False)
    blob = pickle.dumps(frames.store)
    assert len(blob) < 1000  # 360,000 bytes of frames stay in the file
    assert np.array_equal(pickle.loads(blob).frame(1), frames.frame(1))


def test_a_disk_too_small_is_an_error_naming_the_sizes_and_the_loader_falls_back(
    tmp_path, monkeypatch, caplog
):
    split = make_split(tmp_path / "data")
    free = fc.SPACE_MARGIN + 1000
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(0, 0, free))
    sizes = [(90, 160)] * 10
    with pytest.raises(FrameCacheSpaceError, match="frame_cache_dir") as e:
        open_frame_cache([im["file_name"] for im in split.images], sizes, 0, tmp_path / "c",
                         progress=False)
    assert e.value.needed == 10 * 90 * 160 * 3 and e.value.free == free
    assert not list((tmp_path / "c").glob("frames-*.npy"))  # only the lock file
    cfg = TrialConfig(frame_cache=True, frame_cache_dir=str(tmp_path / "c"), img_size=96)
    assert open_frames(split.images, cfg, progress=False) is None
    assert "frame cache off" in caplog.text


def test_a_failed_build_leaves_no_cache_and_the_next_call_builds(tmp_path, monkeypatch):
    paths = write_frames(tmp_path / "data")
    calls = []

    def failing(path: str) -> np.ndarray:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk gone")
        return read_image(path)

    monkeypatch.setattr(fc, "read_image", failing)
    with pytest.raises(OSError, match="disk gone"):
        open_frame_cache(paths, SIZES, 0, tmp_path / "cache", threads=1, progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(fc, "read_image", read_image)
    assert open_frame_cache(paths, SIZES, 0, tmp_path / "cache", progress=False).info.built


def _open_in_child(args: tuple[list[str], str]) -> bool:
    paths, root = args
    return open_frame_cache(paths, SIZES, 0, root, threads=1, progress=False).info.built


def test_concurrent_trials_build_the_cache_once(tmp_path):
    paths = write_frames(tmp_path / "data")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        built = pool.map(_open_in_child, [(paths, str(tmp_path / "cache"))] * 3)
    assert sorted(built) == [False, False, True]
    assert len(list((tmp_path / "cache").glob("frames-*.json"))) == 1


@pytest.mark.parametrize("mode", ["letterbox", "tiles"])
def test_training_batches_are_identical_with_and_without_the_frame_cache(tmp_path, mode):
    split = make_split(tmp_path / "data")
    cfg = TrialConfig(
        img_size=96, tile_size=64, input_mode=mode, batch_size=4, workers=0, max_labels=16,
        seed=5, mixup_prob=0.5, frame_cache_dir=str(tmp_path / "cache"),
    )
    batches = {}
    for on in (False, True):
        loader = build_train_loader(split, TrialConfig(**{**cfg.to_dict(), "frame_cache": on}),
                                    progress=False)
        assert (loader.dataset.source.frames is not None) == on
        loader.set_epoch(1)
        batches[on] = list(loader)
    for (ia, ta), (ib, tb) in zip(batches[False], batches[True], strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta, tb)


def test_a_letterbox_source_reads_a_fit_cache_without_resizing(tmp_path):
    split = make_split(tmp_path / "data")
    cfg = TrialConfig(img_size=96, frame_cache=True, frame_cache_dir=str(tmp_path / "cache"))
    frames = open_frames(split.images, cfg, progress=False)
    assert frames is not None and frames.fit == 96
    cached = SplitImages(split, 96, frames=frames, cache=True)
    plain = SplitImages(split, 96)
    img, labels = cached.load(3)
    ref, ref_labels = plain.load(3)
    assert np.array_equal(img, ref) and np.array_equal(labels, ref_labels)
    assert np.shares_memory(img, frames.store.data)  # a view of the mapping, no copy
