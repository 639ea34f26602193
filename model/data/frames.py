"""Unlabeled frames for self-supervised pretraining: every n-th video frame, and plain images.

Sources are video files, image files, or folders of them (sorted by name, not recursive; other
files in a folder are ignored). Anything that cannot be decoded is an error naming the file:
a pretraining run must not quietly train on fewer frames than it was given. A video that decodes
but yields fewer frames than its container declares (a truncated or damaged file) is a warning
naming the file and the counts (:class:`VideoStats`): logged, or handed to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.data.raw import IMAGE_SUFFIXES, DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")

Source = str | Path

logger = logging.getLogger(__name__)
# Failed reads in a row after which a video is taken to end (the rest of what its container
# declares is missing): a truncated file fails every read from the cut on.
MAX_FAILED_READS = 16


class FramesError(DataError):
    """An unlabeled source is missing, cannot be decoded, or has frames that are too small."""


@dataclass
class VideoStats:
    """What reading one video found: ``declared`` frames (the container's CAP_PROP_FRAME_COUNT,
    0 when it does not say), ``decoded`` frames, ``unreadable`` frames skipped between readable
    ones; frames missing at the end are ``declared - decoded - unreadable``."""

    path: Path
    declared: int = 0
    decoded: int = 0
    unreadable: int = 0

    @property
    def short(self) -> bool:
        """Whether fewer frames decoded than the container declares."""
        return self.declared > 0 and self.decoded < self.declared

    def warning(self) -> str:
        """The one-line warning of a short video ("" when it is not short)."""
        if not self.short:
            return ""
        missing = self.declared - self.decoded - self.unreadable
        parts = [f"{missing} missing at the end"] if missing > 0 else []
        if self.unreadable:
            parts.insert(0, f"{self.unreadable} unreadable")
        return (
            f"video {self.path}: decoded {self.decoded} of the {self.declared} frames its "
            f"container declares ({', '.join(parts)}); the file is truncated or damaged, "
            "re-encode or re-copy it to use every frame"
        )


def iter_video_frames(
    path: Source, every_n: int = 10, *, stats: VideoStats | None = None
) -> Iterator[np.ndarray]:
    """Frames 0, n, 2n, ... of a video as (H, W, 3) uint8 BGR arrays.

    Raises FramesError when the file cannot be opened or not a single frame decodes. Frames in
    between are grabbed without being converted, which is cheaper than reading them. A frame
    that fails to read before the count the container declares is skipped and counted; when the
    video ends short of that count, the warning of :class:`VideoStats` is logged, unless the
    caller passes ``stats`` (filled in as the frames are read) to report it itself.
    """
    _check_every(every_n)
    path = Path(path)
    if not path.is_file():
        raise FramesError(f"video {path} does not exist (or is not a file)")
    cap = cv2.VideoCapture(str(path))
    own = stats is None
    stats = VideoStats(path) if stats is None else stats
    try:
        if not cap.isOpened():
            raise FramesError(f"cannot open video {path}: damaged file or a codec OpenCV lacks; "
                              "convert it to MP4 (H.264) or leave it out")
        stats.declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        index = failed = 0
        while failed < MAX_FAILED_READS:
            if index % every_n == 0:
                ok, frame = cap.read()
                ok = ok and frame is not None
            else:
                ok, frame = cap.grab(), None
            if ok:
                stats.unreadable += failed  # failures followed by a good frame were skipped
                stats.decoded += 1
                failed = 0
                if frame is not None:
                    yield frame
            elif index + 1 >= stats.declared:  # the end the container declares (or no count)
                break
            else:
                failed += 1
            index += 1
        if stats.decoded == 0:
            raise FramesError(f"cannot decode any frame of video {path}: damaged file or a codec "
                              "OpenCV lacks; convert it to MP4 (H.264) or leave it out")
        if own and stats.short:
            logger.warning(stats.warning())
    finally:
        cap.release()


def load_unlabeled_images(
    sources: Source | Sequence[Source],
    *,
    every_n: int = 10,
    max_frames: int | None = None,
    min_size: tuple[int, int] | None = None,
    video_stats: list[VideoStats] | None = None,
) -> list[np.ndarray]:
    """Decode the frames of ``sources`` in order: (H, W, 3) uint8 BGR arrays.

    every_n: take every n-th frame of each video (images are always taken).
    max_frames: stop after this many frames in all. min_size: (height, width) every frame must
    reach (e.g. the pretraining patch grid); a smaller one is a FramesError naming the file.
    video_stats: when given, a :class:`VideoStats` per video read is appended (the caller
    reports short videos); else a short video's warning is logged.
    """
    _check_every(every_n)
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise FramesError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
    if min_size is not None and (len(min_size) != 2 or min(min_size) < 1):
        raise FramesError(f"min_size must be (height, width) of positive ints, got {min_size!r}")
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise FramesError("no unlabeled sources given (expected videos, images or folders)")

    frames: list[np.ndarray] = []
    for file in (f for source in items for f in _media_files(Path(source))):
        if file.suffix.lower() in VIDEO_SUFFIXES:
            stats = VideoStats(file) if video_stats is not None else None
            if stats is not None and video_stats is not None:
                video_stats.append(stats)
            decoded = ((f"{file} (frame {i * every_n})", im)
                       for i, im in enumerate(iter_video_frames(file, every_n, stats=stats)))
        else:
            decoded = iter([(str(file), _read_image(file))])
        for name, im in decoded:
            if min_size is not None and (im.shape[0] < min_size[0] or im.shape[1] < min_size[1]):
                raise FramesError(
                    f"{name} is {im.shape[0]}x{im.shape[1]} (height x width), smaller than the "
                    f"required {min_size[0]}x{min_size[1]}; use larger frames or a smaller "
                    "patch grid")
            frames.append(im)
            if max_frames is not None and len(frames) >= max_frames:
                return frames
    return frames


def _check_every(every_n: int) -> None:
    if not isinstance(every_n, int) or isinstance(every_n, bool) or every_n < 1:
        raise FramesError(f"every_n must be an integer >= 1, got {every_n!r}")


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES


def _media_files(source: Path) -> list[Path]:
    """The videos and images of one source: the file itself, or a folder's, sorted by name."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir()
                       if p.is_file() and not p.name.startswith(".") and _is_media(p))
        if not files:
            raise FramesError(f"folder {source} holds no videos ({', '.join(VIDEO_SUFFIXES)}) "
                              f"or images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not source.exists():
        raise FramesError(f"unlabeled source {source} does not exist")
    if not _is_media(source):
        raise FramesError(f"unlabeled source {source} is neither a video "
                          f"({', '.join(VIDEO_SUFFIXES)}) nor an image "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    return [source]


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FramesError(f"cannot decode image {path}: damaged or not an image file")
    return image
