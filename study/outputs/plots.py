"""PNG plots for the report (matplotlib, Agg backend: no display needed).

* ``<metric>_by_<axis>.png`` — the metric against model size (or, when the size does not vary,
  the first axis that does), one line per combination of the other grid axes (pretraining ×
  loss in the ablation); error bars = std over seeds;
* ``learning_curves.png`` — the metric against epoch for every trial (from ``history.jsonl``);
* ``<metric>_vs_params.png`` — sampled studies: the metric against each sampled value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines and Ray workers have no display
import matplotlib.pyplot as plt  # noqa: E402

from model.config import SIZE_NAMES  # noqa: E402
from study.files import atomic_write  # noqa: E402
from study.layout import (
    RESULT_STATUSES,  # noqa: E402
    valid_metric,  # noqa: E402
)
from study.outputs.report import group_points  # noqa: E402

SIZE_ORDER = SIZE_NAMES


def plot_x_axis(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> str:
    """``size`` when it takes several values, else the first axis that does (else the first):
    a profile that pins the size plots against what it varies."""
    varying = [a for a in axes if len({repr(r.get(a)) for r in rows}) > 1]
    if "size" in varying:
        return "size"
    return (varying or list(axes))[0]


def plot_by_axis(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], metric: str, out: Path
) -> Path | None:
    """The metric against :func:`x_axis` (size when it varies), one line per combination of the
    other axes."""
    if not axes:
        return None
    x_axis = plot_x_axis(rows, axes)
    others = [a for a in axes if a != x_axis]
    points = group_points(rows, axes)
    if not points:
        return None
    xs = sorted({p.values[axes.index(x_axis)] for p in points}, key=_order_key(x_axis))
    lines: dict[tuple[Any, ...], dict[Any, tuple[float, float]]] = {}
    for p in points:
        s = p.summary(metric)
        if s is None:
            continue
        key = tuple(p.values[axes.index(a)] for a in others)
        lines.setdefault(key, {})[p.values[axes.index(x_axis)]] = (s.mean, s.std or 0.0)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, by_x in lines.items():
        present = [x for x in xs if x in by_x]
        idx = [xs.index(x) for x in present]
        ax.errorbar(
            idx,
            [by_x[x][0] for x in present],
            yerr=[by_x[x][1] for x in present],
            marker="o",
            capsize=3,
            label=" / ".join(map(str, key)) or metric,
        )
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(x_axis)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {x_axis}" + (f" ({' × '.join(others)})" if others else ""))
    ax.set_ylim(bottom=0)  # COCO numbers are >= 0 (its -1 "no such objects" is left out)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_learning_curves(
    histories: dict[str, list[dict[str, Any]]], metric: str, out: Path, *, x: str = "epoch"
) -> Path | None:
    """The metric of every run against ``x``: ``epoch`` (integer ticks) or ``train_time_s``
    (drawn in minutes). Lines differ in colour and, past ten runs, in line style too."""
    curves = {
        tid: [
            (h[x], h[metric]) for h in hist
            if valid_metric(h.get(x)) and valid_metric(h.get(metric))
        ]
        for tid, hist in histories.items()
    }
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    scale = 60.0 if x == "train_time_s" else 1.0
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    styles = ("-", "--", ":", "-.")
    for k, (tid, pts) in enumerate(curves.items()):
        ax.plot(
            [e / scale for e, _ in pts], [v for _, v in pts], marker=".", label=tid,
            color=colours[k % len(colours)], linestyle=styles[(k // len(colours)) % len(styles)],
        )
    if x == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training minutes" if x == "train_time_s" else x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if len(curves) <= 24:
        ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1, loc="best")
    return _save(fig, out)


def plot_vs_params(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], metric: str, out: Path
) -> Path | None:
    done = [r for r in rows if r.get("status") in RESULT_STATUSES and valid_metric(r.get(metric))]
    if not keys or not done:
        return None
    fig, axs = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axs[0], keys, strict=True):
        vals = [r.get(key) for r in done]
        if all(valid_metric(v) for v in vals):
            ax.scatter(vals, [r[metric] for r in done], s=14)
        else:  # categorical: positions by first appearance
            cats = list(dict.fromkeys(map(str, vals)))
            ax.scatter([cats.index(str(v)) for v in vals], [r[metric] for r in done], s=14)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(metric)
    return _save(fig, out)


def _order_key(axis: str) -> Callable[[Any], tuple[Any, ...]]:
    if axis == "size":
        return lambda v: (SIZE_ORDER.index(v) if v in SIZE_ORDER else len(SIZE_ORDER), str(v))
    return lambda v: (0, v) if valid_metric(v) else (1, str(v))


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    # the format from the target's name: the temporary file's is .tmp
    atomic_write(out, lambda f: fig.savefig(f, dpi=110, format=out.suffix[1:]), binary=True)
    plt.close(fig)
    return out
