"""Unlabeled frames for self-supervised pretraining: every n-th video frame, and plain images.

Sources are video files, image files, or folders of them (sorted by name, not recursive; other
files in a folder are ignored). Anything that cannot be decoded is an error naming the file:
a pretraining run must not quietly train on fewer frames than it was given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from model.data.raw import IMAGE_SUFFIXES, DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")

Source = str | Path


class FramesError(DataError):
    """An unlabeled source is missing, cannot be decoded, or has frames that are too small."""


def iter_video_frames(path: Source, every_n: int = 10) -> Iterator[np.ndarray]:
    """Frames 0, n, 2n, ... of a video as (H, W, 3) uint8 BGR arrays.

    Raises FramesError when the file cannot be opened or not a single frame decodes. Frames in
    between are grabbed without being converted, which is cheaper than reading them.
    """
    _check_every(every_n)
    path = Path(path)
    if not path.is_file():
        raise FramesError(f"video {path} does not exist (or is not a file)")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise FramesError(f"cannot open video {path}: damaged file or a codec OpenCV lacks; "
                              "convert it to MP4 (H.264) or leave it out")
        index = 0
        while True:
            if index % every_n == 0:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield frame
            elif not cap.grab():
                break
            index += 1
        if index == 0:
            raise FramesError(f"cannot decode any frame of video {path}: damaged file or a codec "
                              "OpenCV lacks; convert it to MP4 (H.264) or leave it out")
    finally:
        cap.release()


def load_unlabeled_images(
    sources: Source | Sequence[Source],
    *,
    every_n: int = 10,
    max_frames: int | None = None,
    min_size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Decode the frames of ``sources`` in order: (H, W, 3) uint8 BGR arrays.

    every_n: take every n-th frame of each video (images are always taken).
    max_frames: stop after this many frames in all. min_size: (height, width) every frame must
    reach (e.g. the pretraining patch grid); a smaller one is a FramesError naming the file.
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
            decoded = ((f"{file} (frame {i * every_n})", im)
                       for i, im in enumerate(iter_video_frames(file, every_n)))
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
