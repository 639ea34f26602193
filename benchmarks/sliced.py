"""What sliced inference costs: frames/s, tiles per frame and merge time, against a letterbox.

    python benchmarks/sliced.py [--checkpoint best.pt] [--size nano] [--device cpu]
                                [--frames 12] [--tiles 320 640] [--letterbox 512 640]

Frames: the embedded test images (640x360) and the same images resized to 1920x1080 (FloW-Img's
size; the content is upscaled, which changes what is detected but not the cost of slicing). The
network is the checkpoint's (its detections make the merge realistic) or a freshly initialised
YOLOX of ``--size`` with its biases set so that every anchor passes the score filter (the worst
case for NMS and the merge). Each setting runs once to warm up, then is timed. Prints figures;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import cv2
import numpy as np
import torch

from model.checkpoint import load_trained_detector
from model.coco_eval import predict_images, slice_settings
from model.config import TrialConfig
from model.data.dataset import load_dataset
from model.data.embedded import embedded_dataset_dir
from model.sliced import frame_tiles, sliced_detect
from model.trainer import resolve_device
from model.yolox import build_yolox_from_config


def _frames(n: int) -> dict[str, list[np.ndarray]]:
    split = load_dataset(embedded_dataset_dir()).test_split
    small = [cv2.imread(im["file_name"]) for im in split.images[:n]]
    big = [cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_LINEAR) for f in small]
    return {"640x360": small, "1920x1080": big}


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up (allocator, oneDNN primitives)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a trained detector (default: a fresh network)")
    p.add_argument("--size", default="nano")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--batch", type=int, default=8, help="tiles (or frames) per forward")
    p.add_argument("--tiles", type=int, nargs="+", default=[320, 640])
    p.add_argument("--letterbox", type=int, nargs="+", default=[512, 640])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.checkpoint:
        net, cfg, _ = load_trained_detector(args.checkpoint, device=device)
    else:
        cfg = TrialConfig(size=args.size, test_conf=0.01)
        net = build_yolox_from_config(cfg)
        with torch.no_grad():  # every anchor scores ~0.5: the most boxes NMS and merge can get
            for conv in (*net.head.obj_preds, *net.head.cls_preds):
                conv.bias.fill_(0.0)
        net = net.to(device)
    net.eval()
    frames = _frames(args.frames)
    print(f"device {device}, {torch.get_num_threads()} threads, YOLOX-{cfg.size}, "
          f"{args.frames} frames, batch {args.batch}, conf {cfg.test_conf}")
    print("| frames | input | forwards/frame | frames/s | forward+NMS ms/frame | merge ms/frame "
          "| boxes/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        for name, fs in frames.items():
            h, w = fs[0].shape[:2]
            for size in args.letterbox:
                c = dataclasses.replace(cfg, input_mode="letterbox", img_size=size)
                sec = _timed(lambda c=c, fs=fs: predict_images(net, fs, c, batch_size=args.batch))
                boxes = sum(len(b) for b in predict_images(net, fs, c, batch_size=args.batch))
                print(f"| {name} | letterbox {size} | 1 | {len(fs) / sec:.2f} | "
                      f"{1000 * sec / len(fs):.0f} | – | {boxes / len(fs):.0f} |")
            for tile in args.tiles:
                c = dataclasses.replace(cfg, input_mode="tiles", tile_size=tile)
                s = slice_settings(c)
                n_tiles = len(frame_tiles(h, w, tile, c.tile_overlap))
                timings: dict[str, float] = {}

                def run(s=s, timings=timings, fs=fs):
                    timings.clear()
                    return sliced_detect(net, fs, s, batch_size=args.batch, timings=timings)

                sec = _timed(run)
                boxes = sum(len(b) for b in run())
                print(f"| {name} | tiles {tile} | {n_tiles} | {len(fs) / sec:.2f} | "
                      f"{1000 * (timings['forward_s'] + timings['nms_s']) / len(fs):.0f} | "
                      f"{1000 * timings['merge_s'] / len(fs):.1f} | {boxes / len(fs):.0f} |")


if __name__ == "__main__":
    main()
