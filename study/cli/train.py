"""Train one trial outside Ray: ``python -m study.cli.train --config CFG.yaml [options]``.

Writes into ``--out`` (default ``runs/train/<config name>``): ``last.pt`` / ``best.pt``,
``metrics.json`` (the 12 COCO numbers at the top level plus run facts and the data counts),
``coco_summary.txt``, ``config.yaml`` (the exact config trained) and ``data_report.txt`` (every
image and box the data check dropped or clipped; ``--strict`` stops on any). Re-running into the
same folder resumes from ``last.pt`` unless ``--no-resume``; a folder whose ``last.pt`` was trained
with another config is refused before anything in it is written. Without ``--data`` (and no
``data`` key) it trains on the embedded floating-bottle set. center_loss/ssl pretraining is
resolved through the artifact cache (computed once when missing); COCO weights are checked before
training starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_checkpoint
from model.coco_eval import COCO_METRICS
from model.config import (
    DEVICES,
    ConfigError,
    TrialConfig,
    add_override_argument,
    save_config,
)
from model.data.raw import plural
from model.trainer import (
    TrainingError,
    config_changes,
    load_trial_data,
    preloaded_data,
    train_detector,
)
from study import cli
from study.files import atomic_write_json, atomic_write_text, format_duration
from study.layout import DATA_REPORT_TXT
from study.outputs.datacheck import ReportWriter, data_counts, strict_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train one YOLOX trial and write its COCO metrics.")
    p.add_argument("--config", type=Path, help="trial config YAML (defaults for missing keys)")
    p.add_argument("--data", help="dataset folder (overrides the config's data key)")
    p.add_argument("--out", type=Path, help="output folder (default runs/train/<config name>)")
    add_override_argument(p, "override one config key (repeatable), e.g. --set epochs=20")
    p.add_argument("--device", choices=DEVICES, help="overrides the config")
    p.add_argument("--no-resume", action="store_true", help="start over even if last.pt exists")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop before training if the data check dropped, clipped or fixed anything",
    )
    p.add_argument("--cache", type=Path, help="pretraining artifact cache (default: user cache)")
    p.add_argument(
        "--no-download", action="store_true", help="never download COCO weights (offline)"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (the per-epoch lines stay)"
    )
    return p


def resolve_config(args: argparse.Namespace) -> TrialConfig:
    """The config file, then ``--set`` overrides, then ``--data`` / ``--device``."""
    return cli.resolve_config(args.config, args.overrides, data=args.data, device=args.device)


def prepare_pretraining(cfg: TrialConfig, args: argparse.Namespace) -> TrialConfig:
    """Fill ``pretrain_artifact`` (center_loss/ssl) and make sure COCO weights are on disk."""
    if cfg.pretrain == "none":
        return cfg
    from study.artifacts.cache import ArtifactCache, default_cache_root
    from study.artifacts.coco_weights import prepare_coco_weights

    cache = ArtifactCache(args.cache or default_cache_root())
    # COCO weights first: the coco trial needs them, and so may the pretraining (pretrain_init).
    prepare_coco_weights([cfg], download=not args.no_download, cache=cache)
    cfg = cache.resolve(cfg, progress=not args.quiet)
    if cfg.pretrain_artifact:
        from model.pretraining.artifact import load_artifact

        figures = load_artifact(cfg.pretrain_artifact, size=cfg.size).get("metrics", {})
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, (int, float))
        )
        print(f"pretrain: {cfg.pretrain} backbone {cfg.pretrain_artifact} ({shown})")
    return cfg


def check_resume_target(out: Path, cfg: TrialConfig, resume: bool) -> None:
    """Refuse, before writing anything into ``out``, a ``last.pt`` there of another config
    (resuming would fail after config.yaml was replaced, leaving a folder that no longer
    matches its checkpoints)."""
    last = out / "last.pt"
    if not resume or not last.is_file():
        return
    diff = config_changes(load_checkpoint(last).get("config", {}), cfg)
    if diff:
        raise ConfigError(
            f"{out} holds a run of another config ({diff}); nothing there was changed. Train "
            "into another --out, or pass --no-resume to start over in this folder"
        )


def load_run_data(cfg: TrialConfig, out: Path, args: argparse.Namespace) -> Any:
    """Check the data once (the trainer reuses it): the report into ``out``, its line here."""
    writer = ReportWriter(out, print)
    dataset = load_trial_data(cfg, progress=not args.quiet, on_report=writer)
    assert writer.report is not None and writer.path is not None
    if args.strict and writer.report.issues:
        raise strict_error(writer.report, f"every one is listed in {writer.path}")
    return dataset




class _StderrLines(logging.Handler):
    """Log records as plain lines on the current ``sys.stderr`` (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _epoch_lines_to_stderr() -> None:
    """Without the progress bar the trainer logs its per-epoch lines; show them (once)."""
    log = logging.getLogger("model.trainer")
    if not any(isinstance(h, _StderrLines) for h in log.handlers):
        log.addHandler(_StderrLines())
    log.setLevel(logging.INFO)


RUN_FACTS = (  # what metrics.json keeps of train_detector's result, besides the split numbers
    "best_val_mAP", "best_epoch", "epochs", "resumed_from_epoch", "train_time_s", "images_per_s",
    "params", "pretrain_loaded", "device", "input_mode", "eval_boxes", "test_epoch",
    "test_images", "test_eval", "tile_counts",
    "assignment",  # positives per object by size, objects without one, IoU of positives
)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.quiet:
        _epoch_lines_to_stderr()
    name = args.config.stem if args.config else "default"
    out = (args.out or Path("runs") / "train" / name).resolve()
    check_resume_target(out, cfg, resume=not args.no_resume)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_run_data(cfg, out, args)
    cfg = prepare_pretraining(cfg, args)
    save_config(cfg, out / "config.yaml", comment=f"trained by study/cli/train.py into {out}")
    start = time.perf_counter()
    with preloaded_data(cfg, dataset):
        result = train_detector(
            cfg, checkpoint_dir=out, resume=not args.no_resume, progress=not args.quiet
        )
    write_run_files(out, cfg, result, dataset.report, time.perf_counter() - start)
    print(result.get("test_summary") or result["summary"])
    print(_summary_line(cfg, result, dataset.report, out))
    return 0


def write_run_files(
    out: Path, cfg: TrialConfig, result: dict[str, Any], report: Any, wall_s: float
) -> None:
    """``coco_summary.txt`` (validation, then test) and ``metrics.json`` (the 12 numbers of
    each split, their intervals, the run's facts, its config and data counts)."""
    summaries = f"validation (best.pt, epoch {result['best_epoch']}):\n{result['summary']}\n"
    if result.get("test_summary"):
        summaries += f"\ntest (the same checkpoint, scored once):\n{result['test_summary']}\n"
    atomic_write_text(out / "coco_summary.txt", summaries)
    split_keys = [f"{p}{k}" for p in ("val_", "test_") for k in COCO_METRICS]
    facts = {
        **{k: result[k] for k in split_keys if k in result},
        **{k: v for k, v in result.items() if k.startswith("test_") and k.endswith(("_lo", "_hi"))},
        **{k: result[k] for k in RUN_FACTS if k in result},
        "wall_time_s": wall_s,
        "torch": torch.__version__,
        "checkpoint": result["last_checkpoint"],
        "best_checkpoint": result["best_checkpoint"],
        "config": cfg.to_dict(),
        "data": {**data_counts(report), "report": str(out / DATA_REPORT_TXT)},
    }
    atomic_write_json(out / "metrics.json", facts, indent=2)


def _summary_line(cfg: TrialConfig, result: dict[str, Any], report: Any, out: Path) -> str:
    resumed = (
        f", resumed after epoch {result['resumed_from_epoch']}"
        if result["resumed_from_epoch"] else ""
    )
    loaded = (
        f", {result['pretrain_loaded']} pretrained tensors loaded ({cfg.pretrain})"
        if cfg.pretrain != "none" else ""
    )
    return (
        f"train: YOLOX-{cfg.size} {cfg.epochs} epochs on {result['device']}{resumed}: "
        f"{_scores(result)}, {format_duration(result['train_time_s'])} training at "
        f"{result['images_per_s']:.1f} img/s, {result['params'] / 1e6:.2f}M params{loaded}"
        f"{_data_note(report)} -> {out / 'metrics.json'}"
    )


def _scores(result: dict[str, Any]) -> str:
    """"test mAP 0.148 [0.121, 0.175] AP50 0.517 (checkpoint of epoch 22, chosen on val mAP
    0.160)", or the validation figures alone when the dataset has no test split."""
    chosen = f"checkpoint of epoch {result['best_epoch']}"
    if "test_mAP" not in result:
        return (
            f"val mAP {result['val_mAP']:.4f} AP50 {result['val_AP50']:.4f} ({chosen}, chosen "
            "on this split: no test split)"
        )
    ci = ""
    if result.get("test_mAP_lo") is not None:
        ci = f" [{result['test_mAP_lo']:.4f}, {result['test_mAP_hi']:.4f}]"
    return (
        f"test mAP {result['test_mAP']:.4f}{ci} AP50 {result['test_AP50']:.4f} ({chosen}, chosen "
        f"on val mAP {result['best_val_mAP']:.4f})"
    )


def _data_note(report: Any) -> str:
    if report.ok:
        return ""
    return (
        f", data: {plural(report.total('images_dropped'), 'image')} and "
        f"{plural(report.total('boxes_dropped'), 'box')} dropped, "
        f"{report.total('boxes_clipped')} clipped (data_report.txt)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_command(
        "train",
        lambda: run(args),
        bad_input=(FileNotFoundError,),
        failures=(TrainingError,),
        failed="training failed",
    )


if __name__ == "__main__":
    sys.exit(main())
