"""Can the data path feed the accelerator? Loader samples/s per CPU core against step samples/s.

For FloW-like frames (the embedded generator at 1920x1080, and at 640x360) and the official
letterbox recipe at ``--img`` (mosaic + mixup at the official probabilities and scales), it
prints, per CPU core (one process, one thread, CPU seconds, so a shared machine does not
distort it):

- the official ``MosaicDetection`` + ``TrainTransform`` (imported at run time from a YOLOX source
  tree, ``--official``; a git directory without a work tree is read with ``git archive``),
  decoding each frame as its ``COCODataset`` does without a cache;
- ours with augmentation in the loader (``augment_on: loader``), decoding each frame, then reading
  the node's frame cache (``frame_cache: true``, fit to the input);
- ours planning for the device (``augment_on: device``): the loader's share (draws, boxes, uint8
  canvases) per core, and the device's share (``render_batch``) per batch on ``--device``;

then, per model size, the training step's samples/s on ``--device`` (our defaults: batched
SimOTA, channels_last; AMP on CUDA) and the share of step time spent waiting for data: on the
CPU with the loader in the training process (``workers: 0``, the CPU quick profile); on CUDA
with 4 loader cores working in parallel, ``max(0, 1 - 4 * loader / step)`` (the step's
samples/s including the device's render), and the cores a trial needs to keep the wait under
10 % (``study.running.feed.cores_needed``, which the study's CPU request line uses).

    python benchmarks/feed.py                       # nano, tiny, s at 640; CPU or CUDA
    python benchmarks/feed.py --sizes nano --frames 24 --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from model.config import TrialConfig
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.dataset import load_dataset
from model.data.device_augment import collate_planned, plan_sample, render_batch
from model.data.loader import split_labels, training_source
from model.data.synth import generate_flow_like
from model.data.transforms import read_image
from study.running.feed import cores_needed

sys.path.insert(0, str(Path(__file__).parent))
from train_step import time_steps  # noqa: E402  (benchmarks/ is not a package)

DEFAULT_OFFICIAL = "/work/.mirror/Megvii-BaseDetection+YOLOX/repo"


def official_module(src: Path, tmp: Path) -> types.ModuleType:
    """``yolox.data.datasets.mosaicdetection`` and ``yolox.data.data_augment`` of the official
    source at ``src`` (a checkout, or a git directory), imported with stand-ins for what they
    import but do not use here (loguru, torchvision, the rest of ``yolox.utils``)."""
    if not (src / "yolox").is_dir():
        archive = subprocess.run(
            ["git", f"--git-dir={src}", "archive", "HEAD", "yolox"], check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        src = tmp
    sys.modules.setdefault("loguru", types.SimpleNamespace(logger=logging.getLogger("yolox")))
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    for name in ("yolox", "yolox.data", "yolox.data.datasets"):  # packages, __init__ not run
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(src.joinpath(*name.split(".")))]
        sys.modules[name] = pkg
    boxes = importlib.util.spec_from_file_location("yolox_boxes", src / "yolox/utils/boxes.py")
    utils = importlib.util.module_from_spec(boxes)
    boxes.loader.exec_module(utils)
    utils.get_local_rank = lambda: 0  # one process
    sys.modules["yolox.utils"] = utils
    return importlib.import_module("yolox.data.datasets.mosaicdetection")


class OfficialBase(torch.utils.data.Dataset):
    """The official ``COCODataset`` interface without a cache: ``pull_item`` decodes and
    resizes by ``min(S / h, S / w)``, labels ``x1, y1, x2, y2, class`` scaled alike."""

    def __init__(self, split, size: int) -> None:
        per = split_labels(split)
        self.paths = [im["file_name"] for im in split.images]
        self.labels = [per[im["id"]] for im in split.images]
        self.input_dim = (size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def load_anno(self, i: int) -> np.ndarray:
        return self.labels[i]

    def pull_item(self, i: int):
        img = read_image(self.paths[i])
        r = min(self.input_dim[0] / img.shape[0], self.input_dim[1] / img.shape[1])
        img = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
        labels = self.labels[i].copy()
        labels[:, :4] *= r
        return img, labels, img.shape[:2], np.array([i])


def per_core(fn: Callable[[int], object], n: int) -> float:
    """Samples per CPU second of ``fn(k)`` over ``n`` calls after two warm-up calls."""
    fn(0), fn(1)
    cpu = time.process_time()
    for k in range(n):
        fn(k)
    return n / (time.process_time() - cpu)


def loader_rates(split, cfg: TrialConfig, official, samples: int, device, batch: int) -> dict:
    """Samples per CPU second of each pipeline, and the device's render ms per batch."""
    p = AugmentParams.from_config(cfg)
    rates: dict[str, float] = {}
    if official is not None:
        aug = official.MosaicDetection(
            OfficialBase(split, cfg.img_size), (cfg.img_size,) * 2, mosaic=True,
            preproc=sys.modules["yolox.data.data_augment"].TrainTransform(
                max_labels=cfg.max_labels, flip_prob=cfg.flip_prob, hsv_prob=cfg.hsv_prob),
            degrees=cfg.degrees, translate=cfg.translate,
            mosaic_scale=(cfg.mosaic_scale_min, cfg.mosaic_scale_max),
            mixup_scale=(cfg.mixup_scale_min, cfg.mixup_scale_max), shear=cfg.shear,
            enable_mixup=True, mosaic_prob=cfg.mosaic_prob, mixup_prob=cfg.mixup_prob,
        )  # fmt: skip
        n = len(aug)
        rates["official MosaicDetection"] = per_core(lambda k: aug[k % n], samples)
    for name, frame_cache in (("ours, loader, decode", False), ("ours, loader, frame cache", True)):
        source = training_source(split, TrialConfig(**{**cfg.to_dict(),
                                 "frame_cache": frame_cache}), progress=False)
        n = len(source)
        rates[name] = per_core(
            lambda k, s=source, n=n: train_sample(s, k % n, sample_rng(0, 0, k), p), samples
        )
    source = training_source(split, TrialConfig(**{**cfg.to_dict(), "frame_cache": True}),
                             progress=False)
    n = len(source)
    rates["ours, device plan, frame cache"] = per_core(
        lambda k: plan_sample(source, k % n, sample_rng(0, 0, k), p), samples
    )
    plans = [plan_sample(source, k % n, sample_rng(0, 0, k), p) for k in range(batch)]
    canvas, params, other, _ = (t.to(device) for t in collate_planned(plans, cfg.img_size))
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        render_batch(canvas, params, other, cfg.img_size)
        sync(device)
        times.append(time.perf_counter() - t0)
    rates["render ms/batch"] = 1000 * min(times)
    return rates


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="nano,tiny,s")
    ap.add_argument("--img", type=int, default=640, help="letterbox input size")
    ap.add_argument("--batch", type=int, default=0, help="step batch (0: 8 on CPU, 64 on CUDA)")
    ap.add_argument("--frames", type=int, default=16, help="generated training frames")
    ap.add_argument("--samples", type=int, default=24, help="timed samples per pipeline")
    ap.add_argument("--iters", type=int, default=2, help="timed training steps per size")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--official", type=Path, default=Path(DEFAULT_OFFICIAL),
                    help="official YOLOX source (checkout or git dir); '' to skip")
    ap.add_argument("--resolutions", default="1920x1080,640x360")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    batch = args.batch or (64 if device.type == "cuda" else 8)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    print(f"device: {where}; torch {torch.__version__}, OpenCV {cv2.__version__}; "
          f"input {args.img}, mosaic + mixup (official probabilities and scales)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        official = None
        if str(args.official) and args.official.exists():
            official = official_module(args.official, tmp_path)
        loaders = {}
        for res in args.resolutions.split(","):
            w, h = (int(v) for v in res.split("x"))
            root = generate_flow_like(tmp_path / f"flow{res}", n_train=args.frames, n_test=2,
                                      width=w, height=h, video=False, progress=False)
            split = load_dataset(root, progress=False).train
            cfg = TrialConfig(img_size=args.img, frame_cache_dir=str(tmp_path / "cache"),
                              multiscale=0)
            loaders[res] = loader_rates(split, cfg, official, args.samples, device, batch)
        print(f"\nloader samples/s per CPU core ({args.frames} FloW-like frames; render on "
              f"{device.type}, batch {batch})")
        names = list(next(iter(loaders.values())))
        print(f"{'pipeline':<34}" + "".join(f"{r:>14}" for r in loaders))
        for name in names:
            print(f"{name:<34}" + "".join(f"{loaders[r][name]:>14.1f}" for r in loaders))
        if official is not None:
            for r, v in loaders.items():
                print(f"  {r}: ours (loader, frame cache) / official = "
                      f"{v['ours, loader, frame cache'] / v['official MosaicDetection']:.2f}x, "
                      f"ours (device plan) / official = "
                      f"{v['ours, device plan, frame cache'] / v['official MosaicDetection']:.2f}x")
        print(f"\ntraining step ({device.type}, batch {batch}, {args.img}px; our defaults)")
        head = f"{'size':<6}{'step ms':>9}{'samples/s':>11}"
        if device.type == "cpu":
            print(head + "".join(f"{'wait ' + r:>18}" for r in loaders)
                  + "   (loader in the training process, workers: 0)")
        else:
            print(head + "".join(f"{'wait 4 cores ' + r:>26}{'cores <10%':>11}" for r in loaders))
        for size in args.sizes.split(","):
            times, _, _ = time_steps(size, args.img, batch, "batched", device, 1, args.iters,
                                     (10, 30), 0, channels_last=True)
            step_s = float(np.mean(times)) / 1000
            rate = batch / step_s
            row = f"{size:<6}{step_s * 1000:>9.0f}{rate:>11.1f}"
            for v in loaders.values():
                if device.type == "cpu":
                    data_s = batch / v["ours, loader, frame cache"]
                    row += f"{data_s / (data_s + step_s):>18.1%}"
                else:
                    step_total = step_s + v["render ms/batch"] / 1000
                    per = v["ours, device plan, frame cache"]
                    wait = max(0.0, 1 - 4 * per * step_total / batch)
                    row += f"{wait:>26.1%}{cores_needed(batch / step_total, per):>11d}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
