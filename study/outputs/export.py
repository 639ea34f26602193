"""``best_config.yaml``: the best trial's full config, ready for ``study/cli/train.py --config``.

Its leading comment holds the trial's metrics, how to rerun it and, for center_loss/ssl, the
artifact it loaded and every pretraining setting that made it. ``pretrain_artifact`` keeps the
path the trial used (inside the study folder's ``pretrain_cache/`` by default), so a rerun loads
the very same backbone; if that file is gone, empty the key and ``study/cli/train.py``
recomputes the artifact from the pretraining settings in the config (the same settings give the
same cache key).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.coco_eval import COCO_METRICS, VAL_METRICS
from model.config import PRETRAIN_METHODS, TrialConfig, config_from_dict, save_config
from study.layout import RESULT_STATUSES, valid_metric
from study.outputs.report import group_points
from study.outputs.stats import summarize


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    return float(v) if valid_metric(v) else None


def choose_best(
    rows: Sequence[dict[str, Any]], metric: str, mode: str, axes: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The best finished trial **on validation** (``val_<metric>``: the test split is never
    used to choose). Completed trials first (an ASHA-stopped trial's config would train longer
    when rerun, so its number is not what a rerun gives); with repeated seeds, the best grid
    point by mean, then its best seed."""
    sign = 1.0 if mode == "max" else -1.0
    metric = f"val_{metric}"
    for statuses in (("done",), RESULT_STATUSES):
        pool = [r for r in rows if r.get("status") in statuses and _value(r, metric) is not None]
        if not pool:
            continue
        points = group_points(pool, axes) if axes else []
        if points and max(len(p.rows) for p in points) > 1:
            best_point = max(points, key=lambda p: sign * summarize(p.metric(metric)).mean)
            pool = best_point.rows
        return max(pool, key=lambda r: _rank(r, metric, sign))
    return None


def _rank(row: dict[str, Any], metric: str, sign: float) -> tuple[float, float]:
    """The metric, then (ties: e.g. every quick trial at mAP 0) the mean of the other
    validation numbers."""
    others = [v for m in VAL_METRICS if m != metric and (v := _value(row, m)) is not None]
    return sign * (_value(row, metric) or 0.0), sum(others) / max(len(others), 1)


def _pretrain_lines(cfg: TrialConfig) -> list[str]:
    if cfg.pretrain not in PRETRAIN_METHODS or not cfg.pretrain_artifact:
        return []
    artifact = Path(cfg.pretrain_artifact)
    sidecar = artifact.with_suffix(".json")  # written next to it by the artifact cache
    settings: dict[str, Any] | None = None
    if sidecar.is_file():
        settings = json.loads(sidecar.read_text()).get("settings")
    if settings is None:
        try:
            from model.pretraining.artifact import pretrain_settings

            settings = pretrain_settings(cfg)
        except (OSError, ValueError):  # the dataset moved: the config keys still say it all
            settings = {}
    lines = [
        f"pretraining: {cfg.pretrain} backbone {artifact}",
        "  (if it is gone: set pretrain_artifact: '' and study/cli/train.py recomputes it from",
        "   these settings, which are also the pretrain_* keys below)",
    ]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    return lines


def _rerun_lines(path: Path, device: str | None, threads: int) -> list[str]:
    # absolute paths: the command works from any folder (runs/best is relative to where it runs)
    # a module of the installed project and an absolute config path: it runs from any folder
    cmd = f"python -m study.cli.train --config {path.resolve()} --out runs/best"
    if device != "cpu" or not threads:
        return [
            f"Rerun: {cmd}",
            "(same seed and settings; bit-identical numbers need the same "
            "device, and on CPU the same number of torch threads)",
        ]
    return [
        f"Rerun: {cmd}",
        f"(trained on CPU with {threads} torch thread(s), which this config's `threads` key "
        "sets: the rerun reproduces these numbers exactly)",
    ]


def export_best(
    row: dict[str, Any],
    config: dict[str, Any],
    path: Path,
    *,
    metric: str,
    study: str,
    point_rows: Sequence[dict[str, Any]] = (),
    weights: Path | None = None,
    threads: int | None = None,
    device: str | None = None,
) -> Path:
    """Write ``config`` (the trial's full config, as it ran) with its metrics as a comment."""
    cfg = config_from_dict(config, source=f"trial {row['id']}")
    if cfg.threads == 0 and threads and device == "cpu":  # a trial from before the threads key
        cfg = dataclasses.replace(cfg, threads=threads)
    val, test = f"val_{metric}", f"test_{metric}"
    lines = [
        f"Best trial of study {study} (chosen on validation {metric}): {row['id']} "
        f"({row.get('status')}), val {metric} {row.get(val, float('nan')):.4f} with the "
        f"checkpoint of epoch {row.get('best_epoch') or row.get('epoch')}",
    ]
    for split in ("test", "val"):
        figures = ", ".join(
            f"{m} {row[f'{split}_{m}']:.4f}" for m in COCO_METRICS
            if isinstance(row.get(f"{split}_{m}"), (int, float))
        )
        if figures:
            lines.append(f"{split}: {figures}")
    lo, hi = row.get(f"{test}_lo"), row.get(f"{test}_hi")
    if _value(row, test) is not None and isinstance(lo, (int, float)):
        lines.append(f"test {metric} 95% interval over the test images: [{lo:.4f}, {hi:.4f}]")
    vals = [float(r[test]) for r in point_rows if _value(r, test) is not None]
    if len(vals) > 1:
        s = summarize(vals)
        lines.append(
            f"its grid point over {s.n} seeds: test {metric} {s.mean:.4f} ± {s.std:.4f} "
            f"(95% CI {s.lo:.4f}..{s.hi:.4f}); this file is its best seed on validation "
            f"({cfg.seed})"
        )
    lines += [
        *_rerun_lines(path, device, cfg.threads),
        *([f"trained weights (Tune's last checkpoint): {weights}"] if weights else []),
        *_pretrain_lines(cfg),
    ]
    return save_config(cfg, path, comment="\n".join(lines))
