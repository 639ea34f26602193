"""Unlabeled frames from videos, image folders and image files (model/data/frames.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.data.frames import FramesError, iter_video_frames, load_unlabeled_images


def _video(path: Path, n: int, size: tuple[int, int] = (48, 64)) -> Path:
    """A clip whose frame i is uniformly grey level 8 * i (so a frame tells its index)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((h, w, 3), 8 * i, np.uint8))
    writer.release()
    return path


def _index(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 8)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return _video(tmp_path / "clip.avi", 25)


def test_every_nth_video_frame(clip: Path) -> None:
    frames = load_unlabeled_images(clip, every_n=10)
    assert [_index(f) for f in frames] == [0, 10, 20]
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert [_index(f) for f in iter_video_frames(clip, 7)] == [0, 7, 14, 21]
    assert len(load_unlabeled_images([clip], every_n=1)) == 25


def test_max_frames_stops_across_sources(clip: Path) -> None:
    frames = load_unlabeled_images([clip, clip], every_n=10, max_frames=4)
    assert [_index(f) for f in frames] == [0, 10, 20, 0]


def test_corrupt_video_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(FramesError, match="broken.mp4"):
        load_unlabeled_images(bad)
    with pytest.raises(FramesError, match="broken.mp4"):
        list(iter_video_frames(bad, 1))


def test_too_small_frames_are_named(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(FramesError, match=r"clip.avi \(frame 0\) is 48x64.*64x64"):
        load_unlabeled_images(clip, min_size=(64, 64))
    assert len(load_unlabeled_images(clip, min_size=(48, 64))) == 3
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(FramesError, match="tiny.png is 20x30"):
        load_unlabeled_images(tmp_path / "tiny.png", min_size=(32, 32))


def test_image_folder_is_read_sorted_skipping_other_files(tmp_path: Path) -> None:
    for name, level in (("b.png", 2), ("a.png", 1), ("c.jpg", 3)):
        cv2.imwrite(str(tmp_path / name), np.full((16, 24, 3), 8 * level, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    frames = load_unlabeled_images(tmp_path)
    assert [_index(f) for f in frames] == [1, 2, 3]
    assert len(load_unlabeled_images(tmp_path / "c.jpg")) == 1


def test_folder_mixing_images_and_videos(tmp_path: Path) -> None:
    _video(tmp_path / "b_clip.avi", 12)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((48, 64, 3), 200, np.uint8))
    frames = load_unlabeled_images(tmp_path, every_n=5)
    assert [_index(f) for f in frames] == [25, 0, 5, 10]


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(FramesError, match="bad.png"):
        load_unlabeled_images(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(every_n=0), "every_n"), (dict(max_frames=0), "max_frames"),
    (dict(min_size=(0, 5)), "min_size"),
])
def test_bad_arguments(clip: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(FramesError, match=match):
        load_unlabeled_images(clip, **kwargs)


def test_missing_empty_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(FramesError, match="nowhere"):
        load_unlabeled_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FramesError, match="empty holds no videos"):
        load_unlabeled_images(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(FramesError, match="data.csv is neither"):
        load_unlabeled_images(tmp_path / "data.csv")
    with pytest.raises(FramesError, match="no unlabeled sources"):
        load_unlabeled_images([])
