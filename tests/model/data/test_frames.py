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


# --- issue 14: a truncated video is a warning naming the file and the counts ---


def _half_truncated(tmp_path: Path) -> Path:
    """A 60-frame MJPG AVI (frame i grey level 4 * i) cut to half its bytes: its header still
    declares 60 frames."""
    path = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(60):
        writer.write(np.full((48, 64, 3), 4 * i, np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 60  # the premise: the container still says 60
    cap.release()
    return path


def test_truncated_video_is_counted_and_warned_about(tmp_path: Path, caplog) -> None:
    path = _half_truncated(tmp_path)
    with caplog.at_level("WARNING", logger="model.data.frames"):
        frames = list(iter_video_frames(path, 1))
    n = len(frames)
    assert 10 <= n < 45  # what the first half of the bytes holds (the cut frame does not decode)
    (record,) = caplog.records
    assert record.getMessage() == (
        f"video {path}: decoded {n} of the 60 frames its container declares ({60 - n} missing "
        "at the end); the file is truncated or damaged, re-encode or re-copy it to use every frame"
    )
    # frames are what they were before the cut
    assert [round(float(f.mean()) / 4) for f in frames] == list(range(n))


def test_caller_collects_the_stats_instead_of_a_log(tmp_path: Path, caplog) -> None:
    path = _half_truncated(tmp_path)
    whole = _video(tmp_path / "whole.avi", 12)
    stats: list = []
    with caplog.at_level("WARNING", logger="model.data.frames"):
        frames = load_unlabeled_images([whole, path], every_n=5, video_stats=stats)
    assert caplog.records == []
    assert [(s.path, s.declared, s.short) for s in stats] == [(whole, 12, False), (path, 60, True)]
    assert stats[0].decoded == 12 and stats[0].warning() == ""
    n = stats[1].decoded
    assert len(frames) == 3 + len(range(0, n, 5))
    assert stats[1].warning().startswith(f"video {path}: decoded {n} of the 60 frames")


def test_whole_videos_give_no_warning(clip: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="model.data.frames"):
        assert len(list(iter_video_frames(clip, 1))) == 25
    assert caplog.records == []


def test_frames_cli_prints_the_warning(tmp_path: Path, capsys) -> None:
    from model.data.__main__ import main

    path = _half_truncated(tmp_path)
    assert main(["frames", str(path), "--out", str(tmp_path / "out"), "--every", "1"]) == 0
    captured = capsys.readouterr()
    n = len(list((tmp_path / "out").glob("frame_*.png")))
    assert captured.err.splitlines() == [
        f"warning: video {path}: decoded {n} of the 60 frames its container declares "
        f"({60 - n} missing at the end); the file is truncated or damaged, re-encode or re-copy "
        "it to use every frame"
    ]
    assert captured.out.splitlines()[-1] == (
        f"frames: wrote {n} PNGs (one video frame in 1) from 1 source to {tmp_path / 'out'}; "
        "1 video decoded short of the frames its container declares (see the warning above)"
    )


class _FlakyCapture:
    """A stand-in for cv2.VideoCapture: 10 frames declared, frames 3 and 4 fail to read."""

    def __init__(self, path: str) -> None:
        self.next = 0

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return True

    def get(self, prop: int) -> float:
        return 10.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

    def grab(self) -> bool:
        i, self.next = self.next, self.next + 1
        return i < 10 and i not in (3, 4)

    def read(self) -> tuple[bool, np.ndarray | None]:
        i = self.next
        ok = self.grab()
        return ok, np.full((4, 4, 3), 8 * i, np.uint8) if ok else None

    def release(self) -> None:
        pass


def test_unreadable_frames_between_good_ones_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import model.data.frames as frames_mod

    monkeypatch.setattr(frames_mod.cv2, "VideoCapture", _FlakyCapture)
    path = tmp_path / "flaky.avi"
    path.write_bytes(b"")
    with caplog.at_level("WARNING", logger="model.data.frames"):
        got = [_index(f) for f in iter_video_frames(path, 1)]
    assert got == [0, 1, 2, 5, 6, 7, 8, 9]
    assert caplog.records[0].getMessage() == (
        f"video {path}: decoded 8 of the 10 frames its container declares (2 unreadable); the "
        "file is truncated or damaged, re-encode or re-copy it to use every frame"
    )
