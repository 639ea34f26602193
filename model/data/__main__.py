"""``python -m model.data convert|check|preview|synth|frames …`` — dataset tools.

Every command ends with a one-line summary. Exit status: 0 done, 1 ``check --strict`` (or
``convert --strict``) found problems, 2 the dataset (or an argument) cannot be used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from model.config import (
    ConfigError,
    TrialConfig,
    add_override_argument,
    config_from_dict,
    load_config,
    parse_override,
)
from model.data.dataset import DetectionDataset, DetectionSplit, load_dataset
from model.data.raw import DataError, plural

if TYPE_CHECKING:
    from model.data.frames import VideoStats


def _dataset_args(p: argparse.ArgumentParser, val_fraction: float = 0.2) -> None:
    p.add_argument("src", type=Path, help="dataset folder (FloW-Img, VOC, COCO JSON or YOLO txt)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=val_fraction,
        help="share of training images held out as val when the layout has no val split "
        f"(default {val_fraction:g}"
        + (": the layout's own splits, as they are)" if val_fraction == 0 else ", as training "
           "does)"),
    )
    p.add_argument(
        "--split-seed", "--seed", dest="split_seed", type=int, default=0,
        help="seed of that stratified train/val hold-out",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names to keep, in order; boxes of other classes are "
        "dropped and counted (default: every class in the dataset)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1) when anything would be dropped, clipped or fixed",
    )
    p.add_argument("--workers", type=int, default=None, help="image-decoding threads")
    p.add_argument(
        "--max-issues",
        type=int,
        default=30,
        help="problem lines to print (the JSON report has them all); -1 = all",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="write COCO JSON per split (train/val/test.json)")
    _dataset_args(p, val_fraction=0.0)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--copy-images",
        action="store_true",
        help="copy images to OUT_DIR/images/<split>/ (paths relative to OUT_DIR); "
        "default: reference the originals by absolute path",
    )

    p = sub.add_parser("check", help="check every image and box; print the data report")
    _dataset_args(p)
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")

    p = sub.add_parser("preview", help="grid of augmented training samples with their boxes")
    p.add_argument("src", type=Path)
    p.add_argument("--out", type=Path, default=Path("preview.png"))
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=None, help="default: the config's (640)")
    p.add_argument("--config", type=Path, help="trial config YAML whose augmentation to show")
    add_override_argument(
        p, "override a config key (repeatable), e.g. --set mosaic_centre_crop=true"
    )

    p = sub.add_parser("synth", help="generate a FloW-like dataset (VOC XML + videos)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=240, help="training images")
    p.add_argument("--test", type=int, default=60, help="test images")

    p = sub.add_parser("frames", help="extract unlabeled frames from videos / image folders")
    p.add_argument("sources", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every", type=int, default=10, help="take every n-th video frame")
    return parser


def _load(args: argparse.Namespace, strict: bool) -> DetectionDataset:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return load_dataset(
        args.src,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        strict=strict,
        classes=classes,
        workers=args.workers,
    )


def _max_issues(args: argparse.Namespace) -> int | None:
    return None if args.max_issues < 0 else args.max_issues


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # atomic: a reader never sees half a file


def _copy_images(split: DetectionSplit, doc: dict[str, Any], out_dir: Path) -> None:
    """Copy the split's images under out_dir/images/<split>/ and point ``doc`` at the copies."""
    folder = out_dir / "images" / split.name
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for im in tqdm(doc["images"], desc=f"copying {split.name} images", unit="img", disable=None):
        src = Path(im["file_name"])
        name = src.name if src.name not in used else f"{src.stem}_{im['id']}{src.suffix}"
        used.add(name)
        shutil.copy2(src, folder / name)
        im["file_name"] = f"images/{split.name}/{name}"


def cmd_convert(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    if out_dir.resolve() == args.src.resolve():
        raise DataError(f"OUT_DIR {out_dir} is the source folder; choose another folder")
    ds = _load(args, strict=False)
    report = ds.report
    print(report.format(_max_issues(args)))
    if args.strict and not report.ok:
        print(f"convert --strict: nothing written, {len(report.problems)} problems in {args.src}")
        return 1
    if not all(s.accounted for s in report.splits.values()):  # a reader bug, never bad data
        raise DataError(f"images/boxes read != written + dropped: {report.to_dict()['splits']}")
    # A split file left from an earlier conversion would be read back as part of this dataset.
    stale = [f"{n}.json" for n in ("train", "val", "test") if n not in ds.splits]
    stale = [name for name in stale if (out_dir / name).exists()]
    if stale:
        raise DataError(
            f"{out_dir} already holds {', '.join(stale)} from another conversion, which would be "
            f"read back with this one; remove it or choose an empty folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, split in ds.splits.items():
        doc = split.to_coco_dict()
        if args.copy_images:
            _copy_images(split, doc, out_dir)
        _write_json(out_dir / f"{name}.json", doc)
        counts = f"{plural(split.num_images, 'image')}, {plural(split.num_annotations, 'box')}"
        written.append(f"{name}.json ({counts})")
    _write_json(out_dir / "data_report.json", report.to_dict())
    total = report.total
    print(
        f"convert: wrote {', '.join(written)} to {out_dir}; read "
        f"{plural(total('images_read'), 'image')} / {plural(total('boxes_read'), 'box')}, "
        f"dropped {plural(total('images_dropped'), 'image')} / "
        f"{plural(total('boxes_dropped'), 'box')}, clipped {plural(total('boxes_clipped'), 'box')}"
        f" (reasons in data_report.json)"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    ds = _load(args, strict=False)
    report = ds.report
    print(report.format(_max_issues(args)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        _write_json(args.json, report.to_dict())
    status = "OK" if report.ok else f"{len(report.problems)} problems"
    if report.warnings:
        status += f", {plural(len(report.warnings), 'warning')} (see Warnings above)"
    failed = args.strict and not report.ok
    print(
        f"check{' --strict' if args.strict else ''}: {'FAILED, ' if failed else ''}{status} — "
        f"{report.summary()}"
    )
    return 1 if failed else 0


def cmd_preview(args: argparse.Namespace) -> int:
    from model.data.preview import render_preview  # pulls in the augmentation stack: lazily

    cfg = load_config(args.config) if args.config else TrialConfig()
    values = dict(parse_override(text) for text in args.overrides)
    if args.img_size is not None:
        values["img_size"] = args.img_size
    if values:
        cfg = config_from_dict(values, source="command line", base=cfg)
    path = render_preview(args.src, args.out, n=args.n, seed=args.seed, cfg=cfg)
    print(
        f"preview: wrote {path} ({args.n} augmented training samples of {args.src}, "
        f"seed {args.seed}, "
        + (f"native-resolution {cfg.tile_size} px tiles)" if cfg.input_mode == "tiles"
           else f"{cfg.img_size} px)")
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from model.data.synth import generate_flow_like

    path = generate_flow_like(args.out_dir, seed=args.seed, n_train=args.train, n_test=args.test)
    print(
        f"synth: wrote a FloW-like dataset ({args.train} training, {args.test} test images, "
        f"seed {args.seed}) to {path}"
    )
    return 0


def cmd_frames(args: argparse.Namespace) -> int:
    import cv2

    from model.data.frames import load_unlabeled_images

    if args.every < 1:
        raise DataError(f"--every must be >= 1, got {args.every}")
    videos: list[VideoStats] = []
    frames = load_unlabeled_images(args.sources, every_n=args.every, video_stats=videos)
    short = [v for v in videos if v.short]
    for v in short:
        print(f"warning: {v.warning()}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(tqdm(frames, desc="writing frames", unit="img", disable=None)):
        path = args.out / f"frame_{i:06d}.png"
        if not cv2.imwrite(str(path), frame):
            raise DataError(f"cannot write {path}")
    warned = (
        f"; {plural(len(short), 'video')} decoded short of the frames its container declares "
        "(see the warning above)"
        if short
        else ""
    )
    print(
        f"frames: wrote {len(frames)} PNGs (one video frame in {args.every}) from "
        f"{plural(len(args.sources), 'source')} to {args.out}{warned}"
    )
    return 0


COMMANDS = {
    "convert": cmd_convert,
    "check": cmd_check,
    "preview": cmd_preview,
    "synth": cmd_synth,
    "frames": cmd_frames,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"{args.command}: failed (see the error above)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
