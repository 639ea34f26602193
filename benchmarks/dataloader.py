"""Training data-loader throughput: images/s of the full mosaic + mixup pipeline, per worker count.

Compares our loader (``model.data.loader.build_train_loader``) with a stand-in that follows the
official YOLOX per-sample structure (the ``yolox`` package does not install here):

- ``MosaicDetection`` + ``TrainTransform`` steps in the same order, with the same extra work:
  every ``pull_item`` result resized again in the mosaic, the whole-image copy kept for the
  fallback, the HSV jitter as int16 arithmetic over the whole image, the mixup blend in float32,
  ``preproc`` producing a float32 CHW array in the worker;
- python ``random`` / global ``np.random`` seeded per worker (``worker_init_reset_seed``);
- the default collate of float32 arrays (4 bytes per pixel through the worker queues).

Ours differs where it is cheaper: uint8 through the queues and float conversion after batching,
a lookup-table HSV, uint8 mixup blend, no redundant resizes or copies, per-sample generators.

Usage::

    python benchmarks/dataloader.py                      # 1920x1080 JPEGs, workers 0,1,2
    python benchmarks/dataloader.py --resolution 640x360 --cache
    python benchmarks/dataloader.py --data PATH          # any layout model.data.dataset reads
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate
from tqdm import tqdm

from model.config import TrialConfig
from model.data.dataset import DetectionSplit
from model.data.loader import SplitImages, build_train_loader, read_image
from model.data.mosaic import mosaic_placement
from model.data.transforms import affine_matrix, box_candidates, hflip


def generate_split(root: Path, n: int, width: int, height: int, seed: int = 0) -> DetectionSplit:
    """``n`` JPEG river-like frames (smooth texture plus noise) with 2-5 small bright boxes."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        low = rng.integers(40, 140, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
        img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 25, img.shape, dtype=np.uint8))
        for _ in range(int(rng.integers(2, 6))):
            w, h = (int(v) for v in rng.integers(8, 32, 2) * max(1, width // 640))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            img[y : y + h, x : x + w] = rng.integers(180, 255, 3)
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        path = root / f"frame_{i:04d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i + 1, "file_name": str(path), "width": width, "height": height})
    return DetectionSplit("train", images, anns, [{"id": 1, "name": "bottle"}])


# --- the official-structure stand-in ---------------------------------------------------------


class OfficialStructure(Dataset):
    """Per-sample pipeline with the official structure and costs (see the module docstring)."""

    def __init__(self, split: DetectionSplit, cfg: TrialConfig, cache: bool = False) -> None:
        # paths and labels; with cache=True also the resized images (official cache_img="ram")
        self.source = SplitImages(split, cfg.img_size, cache=cache, progress=False)
        self.cache = cache
        self.cfg = cfg
        self.size = cfg.img_size

    def __len__(self) -> int:
        return len(self.source)

    def pull_item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache:
            return self.source.load(i)
        img = read_image(self.source.paths[i])
        r = min(self.size / img.shape[0], self.size / img.shape[1])
        img = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
        labels = self.source.labels[i].copy()
        labels[:, :4] *= r
        return img, labels

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        s, cfg = self.size, self.cfg
        yc, xc = int(random.uniform(0.5 * s, 1.5 * s)), int(random.uniform(0.5 * s, 1.5 * s))
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        parts = []
        for q, i in enumerate([idx] + [random.randint(0, len(self) - 1) for _ in range(3)]):
            img, lab = self.pull_item(i)
            r = min(s / img.shape[0], s / img.shape[1])
            img = cv2.resize(
                img, (int(img.shape[1] * r), int(img.shape[0] * r))
            )  # always, as official
            (a, b, c, d), (e, f, g, h) = mosaic_placement(q, xc, yc, img.shape[1], img.shape[0], s)
            canvas[b:d, a:c] = img[f:h, e:g]
            lab[:, [0, 2]] = lab[:, [0, 2]] * r + a - e
            lab[:, [1, 3]] = lab[:, [1, 3]] * r + b - f
            parts.append(lab)
        labels = np.concatenate(parts).clip(0, 2 * s)
        m = affine_matrix(
            s, angle=random.uniform(-cfg.degrees, cfg.degrees),
            scale=random.uniform(cfg.mosaic_scale_min, cfg.mosaic_scale_max),
            shear_x=random.uniform(-cfg.shear, cfg.shear),
            shear_y=random.uniform(-cfg.shear, cfg.shear),
            translate_x=random.uniform(-cfg.translate, cfg.translate),
            translate_y=random.uniform(-cfg.translate, cfg.translate),
        )  # fmt: skip
        img = cv2.warpAffine(canvas, m, (s, s), borderValue=(114, 114, 114))
        corners = labels[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 2) @ m[:, :2].T + m[:, 2]
        xs, ys = corners[:, 0].reshape(-1, 4), corners[:, 1].reshape(-1, 4)
        labels[:, :4] = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1).clip(0, s)
        if len(labels) and random.random() < cfg.mixup_prob:
            img, labels = self.mixup(img, labels)
        return self.train_transform(img, labels)

    def mixup(self, img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        jit = random.uniform(self.cfg.mixup_scale_min, self.cfg.mixup_scale_max)
        flip = random.uniform(0, 1) > 0.5
        while True:  # official: draw until an image with boxes
            i = random.randint(0, len(self) - 1)
            if len(self.source.labels[i]):
                break
        other, lab = self.pull_item(i)
        cp = np.ones((s, s, 3), np.uint8) * 114
        r = min(s / other.shape[0], s / other.shape[1])
        resized = cv2.resize(other, (int(other.shape[1] * r), int(other.shape[0] * r)))
        cp[: resized.shape[0], : resized.shape[1]] = resized
        cp = cv2.resize(cp, (int(s * jit), int(s * jit)))
        if flip:
            cp = cp[:, ::-1, :]
        padded = np.zeros((max(cp.shape[0], s), max(cp.shape[1], s), 3), np.uint8)
        padded[: cp.shape[0], : cp.shape[1]] = cp
        y0 = random.randint(0, padded.shape[0] - s - 1) if padded.shape[0] > s else 0
        x0 = random.randint(0, padded.shape[1] - s - 1) if padded.shape[1] > s else 0
        crop = padded[y0 : y0 + s, x0 : x0 + s]
        boxes = lab[:, :4] * r * jit
        if flip:
            boxes[:, [0, 2]] = cp.shape[1] - boxes[:, [2, 0]]
        moved = boxes - [x0, y0, x0, y0]
        moved = moved.clip(0, s)
        keep = box_candidates(boxes, moved, 5)
        if keep.sum() >= 1:
            labels = np.vstack([labels, np.hstack([moved[keep], lab[keep, 4:5]])])
            img = (0.5 * img.astype(np.float32) + 0.5 * crop.astype(np.float32)).astype(np.uint8)
        return img, labels

    def train_transform(self, img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, cfg = self.size, self.cfg
        _keep_for_fallback = img.copy(), labels.copy()  # official copies unconditionally
        if random.random() < cfg.hsv_prob:
            gains = (np.random.uniform(-1, 1, 3) * [5, 30, 30] * np.random.randint(0, 2, 3)).astype(
                np.int16
            )
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.int16)
            hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
            hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
            hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
            img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
        if random.random() < cfg.flip_prob:
            img, labels = hflip(img, labels)
        r = min(s / img.shape[0], s / img.shape[1])
        out = np.ones((s, s, 3), np.uint8) * 114
        resized = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
        out[: resized.shape[0], : resized.shape[1]] = resized
        chw = np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
        targets = np.zeros((cfg.max_labels, 5), np.float32)
        w, h = labels[:, 2] - labels[:, 0], labels[:, 3] - labels[:, 1]
        keep = np.minimum(w, h) * r > 1
        n = min(int(keep.sum()), cfg.max_labels)
        kept = labels[keep][:n]
        targets[:n] = np.stack(
            [kept[:, 4], (kept[:, 0] + kept[:, 2]) / 2 * r, (kept[:, 1] + kept[:, 3]) / 2 * r,
             w[keep][:n] * r, h[keep][:n] * r], 1,
        )  # fmt: skip
        return chw, targets


def _official_worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def official_loader(split: DetectionSplit, cfg: TrialConfig, cache: bool = False) -> DataLoader:
    kwargs: dict = {"num_workers": cfg.workers, "worker_init_fn": _official_worker_init}
    if cfg.workers:
        cv2.setNumThreads(0)  # as the official configure_module
        kwargs.update(persistent_workers=True)
    return DataLoader(
        OfficialStructure(split, cfg, cache), batch_size=cfg.batch_size, shuffle=True,
        drop_last=True, collate_fn=default_collate, **kwargs,
    )  # fmt: skip


# --- timing -----------------------------------------------------------------------------------


def measure(loader, batches: int, batch_size: int) -> tuple[float, float]:
    """``(images/s wall clock, main-process CPU ms per image)`` over ``batches`` batches after
    one warm-up batch (worker start-up excluded). With workers 0 the CPU figure is the whole
    pipeline's cost and barely depends on what else the machine runs; with workers it is only
    the main process's share (collate, float conversion)."""
    done, start, cpu0 = 0, 0.0, 0.0
    while done < batches:
        for i, (images, _targets) in enumerate(loader):
            images.float()  # ours already is; makes both ends produce float batches
            if i == 0 and start == 0.0:
                start, cpu0 = time.perf_counter(), time.process_time()
                continue
            done += 1
            if done == batches:
                break
    n = batches * batch_size
    return n / (time.perf_counter() - start), (time.process_time() - cpu0) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset folder (default: generated)"
    )
    parser.add_argument("--resolution", default="1920x1080", help="generated frames, WxH")
    parser.add_argument("--images", type=int, default=32, help="generated frames")
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; median shown")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--cache", action="store_true", help="also time ours with cache_images")
    parser.add_argument("--no-official", action="store_true", help="skip the official stand-in")
    args = parser.parse_args()

    # Loaders with workers switch OpenCV threading off process-wide (see model.data.loader);
    # off from the start, every round of the workers-0 runs is measured the same way.
    cv2.setNumThreads(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is not None:
            from model.data.dataset import load_dataset

            split = load_dataset(args.data).train
            what = f"{args.data} ({len(split.images)} training images)"
        else:
            w, h = (int(v) for v in args.resolution.lower().split("x"))
            split = generate_split(Path(tmp), args.images, w, h)
            what = f"{args.images} generated {w}x{h} JPEG frames"
        print(
            f"data: {what}; input {args.img_size}, batch {args.batch_size}, "
            f"{args.batches} timed batches x {args.rounds} rounds (median)"
        )
        runs = []
        for workers in (int(v) for v in args.workers.split(",")):
            cfg = TrialConfig(img_size=args.img_size, batch_size=args.batch_size, workers=workers)
            runs.append(("ours", cfg, lambda c=cfg: build_train_loader(split, c, progress=False)))
            if args.cache:
                runs.append(("ours, cache_images", cfg, lambda c=cfg: build_train_loader(
                    split, c, cache=True, progress=False)))  # fmt: skip
            if not args.no_official:
                runs.append(
                    ("official-structure stand-in", cfg, lambda c=cfg: official_loader(split, c))
                )
            if not args.no_official and args.cache:
                runs.append(("official stand-in, cached", cfg, lambda c=cfg: official_loader(
                    split, c, cache=True)))  # fmt: skip
        results: dict[int, list[tuple[float, float]]] = {k: [] for k in range(len(runs))}
        for _ in tqdm(range(args.rounds), desc="rounds"):
            for k, (_name, _cfg, make) in enumerate(runs):
                loader = make()
                results[k].append(measure(loader, args.batches, args.batch_size))
                del loader
        print(
            f"{'pipeline':<28}{'workers':>8}{'img/s':>9}{'img/s/worker':>14}{'main CPU ms/img':>17}"
        )
        for k, (name, cfg, _make) in enumerate(runs):
            rate = statistics.median(r for r, _ in results[k])
            cpu = statistics.median(c for _, c in results[k])
            per = rate / max(cfg.workers, 1)
            print(f"{name:<28}{cfg.workers:>8}{rate:>9.1f}{per:>14.1f}{cpu:>17.1f}")
        print(f"(wall clock on {os.cpu_count()} CPU cores; other processes share them)")


if __name__ == "__main__":
    main()
