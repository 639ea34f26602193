"""Where pretraining data comes from: the training split, unlabeled frames, the data fingerprint.

Only the training split is used (never val/test), so pretraining cannot see the evaluation images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import cv2

from model.config import TrialConfig, class_list
from model.data.dataset import load_dataset
from model.data.embedded import embedded_dataset_dir
from model.data.frames import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_video_frames
from model.pretraining.common import PretrainDataError
from model.pretraining.ssl import Frame

# Files whose bytes are hashed in the fingerprint (small, and what a relabelling changes).
ANNOTATION_SUFFIXES = (".xml", ".json", ".txt", ".yaml", ".yml", ".csv")
VIDEO_DIRS = ("video", "videos")  # unlabeled videos inside a dataset folder


def data_dir(cfg: TrialConfig) -> Path:
    """The dataset folder of ``cfg``: ``cfg.data``, or the embedded set ("" = generate once)."""
    return Path(cfg.data) if cfg.data else embedded_dataset_dir()


def ssl_source_paths(cfg: TrialConfig) -> list[Path]:
    """The user's extra unlabeled sources (``cfg.ssl_sources``, os.pathsep-separated)."""
    return [Path(s) for s in cfg.ssl_sources.split(os.pathsep) if s.strip()]


def _skip(path: Path) -> bool:
    # Lock files, temporary files and hidden files come and go without changing the data.
    return path.name.startswith(".") or path.suffix in (".lock", ".tmp")


def data_fingerprint(data_path: str | Path, extra_sources: list[Path] | None = None) -> str:
    """A hash of a dataset (and extra sources): annotation files by content, every other file by
    relative name and size (cheap: image and video bytes are not read). 16 hex digits.

    The folder's own location is not part of it, so a copied dataset keeps its fingerprint.
    """
    h = hashlib.sha256()
    for i, root in enumerate([Path(data_path), *(extra_sources or [])]):
        if not root.exists():
            raise PretrainDataError(f"data source {root} does not exist")
        h.update(f"source {i}\n".encode())
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            rel = f.name if f == root else f.relative_to(root).as_posix()
            if any(_skip(Path(part)) for part in Path(rel).parts):
                continue
            h.update(f"{rel}\0{f.stat().st_size}\n".encode())
            if f.suffix.lower() in ANNOTATION_SUFFIXES:
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def cfg_fingerprint(cfg: TrialConfig) -> str:
    """The fingerprint of everything ``cfg``'s pretraining reads."""
    extra = ssl_source_paths(cfg) if cfg.pretrain == "ssl" else []
    return data_fingerprint(data_dir(cfg), extra)


def train_split(
    cfg: TrialConfig, *, progress: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(images, annotations, source) of the training split of ``cfg``'s dataset."""
    root = data_dir(cfg)
    dataset = load_dataset(
        root, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=progress,
        classes=class_list(cfg.classes) or None,
    )
    return dataset.train.images, dataset.train.annotations, str(root)


def _video_frames(path: Path, every_n: int) -> list[Frame]:
    """Every ``every_n``-th frame, in memory; an unreadable video is a FramesError naming it."""
    return [
        Frame(f"{path} (frame {i * every_n})", im.shape[1], im.shape[0], im)
        for i, im in enumerate(iter_video_frames(path, every_n))
    ]


def _image_frame(path: Path) -> Frame:
    """A lazily read image; read once here for its size (not kept, to bound memory)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PretrainDataError(f"cannot read image {path}: not an image file or damaged")
    return Frame(str(path), image.shape[1], image.shape[0])


def _source_frames(source: Path, every_n: int) -> list[Frame]:
    """Frames of a video file, an image file, or a folder of them (sorted, not recursive)."""
    if not source.exists():
        raise PretrainDataError(f"unlabeled source {source} does not exist")
    if source.is_file():
        files = [source]
    else:
        files = sorted(p for p in source.iterdir() if p.is_file() and not _skip(p))
    frames: list[Frame] = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            frames.extend(_video_frames(f, every_n))
        elif suffix in IMAGE_SUFFIXES:
            frames.append(_image_frame(f))
        elif f == source:
            raise PretrainDataError(
                f"unlabeled source {f} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor an "
                f"image ({', '.join(IMAGE_SUFFIXES)})"
            )
    if not frames:
        raise PretrainDataError(f"unlabeled source {source} holds no video or image file")
    return frames


def unlabeled_frames(cfg: TrialConfig, *, progress: bool = True) -> list[Frame]:
    """Every ssl frame: the training images (labels ignored), the dataset's video folder, and
    ``cfg.ssl_sources``; videos sampled every ``cfg.ssl_video_every`` frames.

    Images stay on disk and are read when a batch needs them; video frames are held in memory.
    """
    images, _, _ = train_split(cfg, progress=progress)
    frames = [Frame(str(im["file_name"]), int(im["width"]), int(im["height"])) for im in images]
    root = data_dir(cfg)
    sources = [root / d for d in VIDEO_DIRS if (root / d).is_dir()] + ssl_source_paths(cfg)
    for source in sources:
        frames.extend(_source_frames(source, cfg.ssl_video_every))
    return frames
