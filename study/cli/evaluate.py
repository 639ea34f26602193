"""Re-evaluate a training checkpoint: ``python -m study.cli.evaluate --checkpoint CKPT [--data
PATH]``.

The config (model, input size, thresholds, data) comes from the checkpoint; ``--data``, ``--set``
and ``--device`` override it. Prints the COCO summary and a one-line result; ``--json`` also
writes the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint import load_trained_detector
from model.coco_eval import COCO_METRICS, evaluate_coco
from model.config import (
    DEVICES,
    add_override_argument,
)
from model.data.raw import DataError
from model.trainer import load_trial_data, resolve_device
from study import cli
from study.files import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COCO-evaluate a YOLOX training checkpoint.")
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt or best.pt")
    p.add_argument("--data", help="dataset folder (default: the one the checkpoint trained on)")
    add_override_argument(
        p, "override a config key, e.g. --set test_conf=0.001 or --set img_size=640"
    )
    p.add_argument("--device", choices=DEVICES, help="default: the config's")
    p.add_argument(
        "--split", choices=("test", "val"), default=None,
        help="the split to score (default: test when the dataset has one, else val)",
    )
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")
    p.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    net, cfg, state = load_trained_detector(args.checkpoint, use_ema=not args.no_ema)
    cfg = cli.resolve_config(cfg, args.overrides, data=args.data, device=args.device)
    device = resolve_device(cfg.device)
    dataset = load_trial_data(cfg)
    split = dataset.val_split if args.split == "val" else dataset.test_split
    if split is None:
        if args.split == "test":
            raise DataError(f"{dataset.root}: no test split; use --split val")
        split = dataset.val_split
    result = evaluate_coco(net.to(device), split, cfg, progress=not args.quiet)
    print(result["summary"])
    metrics = {k: result[k] for k in COCO_METRICS}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        facts = {
            **metrics,
            "checkpoint": str(args.checkpoint),
            "epoch": state.get("epoch"),
            "images": result["images"],
            "split": split.name,
            "config": cfg.to_dict(),
        }
        atomic_write_json(args.json, facts, indent=2)
    weights = "raw" if args.no_ema or not state.get("ema") else "EMA"
    print(
        f"evaluate: {args.checkpoint} (epoch {state.get('epoch')}, {weights} weights) on "
        f"{result['images']} {split.name} images at {cfg.img_size}px: "
        f"mAP {metrics['mAP']:.4f} AP50 {metrics['AP50']:.4f} AR_100 {metrics['AR_100']:.4f}, "
        f"{result['num_detections']} detections"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_command("evaluate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
