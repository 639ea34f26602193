"""``report.md``: the ablation table in the FloW study's style, from the results rows.

Rows are grid points (pretraining × loss × size for the ablation space), columns the 12 COCO
numbers, then training time, images/s and parameters. Every cell carries its difference from the
baseline row, and the best value of each COCO column is bold. With repeated seeds a cell is
``mean ± std``; two more tables give the 95% interval of each mean and Welch's 95% interval of each
difference from the baseline, and a difference whose interval excludes 0 is marked ``*``.

COCO reports -1 for an area range without ground truth (e.g. AP_large on FloW): shown as "–" and
left out of means, differences and the best-value marks.

Ray-free: it takes plain row dicts (``results.csv``), so it is tested on hand-made tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from model.evaluate import COCO_METRICS
from study.layout import RESULT_STATUSES
from study.layout import valid_metric as _valid
from study.stats import Difference, Summary, summarize, welch

DIGITS = 3  # COCO numbers as the FloW study prints them


@dataclass
class ReportInput:
    title: str
    rows: list[dict[str, Any]]
    axes: list[str]  # grid axes (row labels); empty for a sampled study
    baseline: dict[str, Any] = field(default_factory=dict)
    stand_in_for: dict[str, Any] = field(default_factory=dict)  # what the baseline replaces
    metric: str = "mAP"
    mode: str = "max"
    sampled_keys: list[str] = field(default_factory=list)  # sampled studies: the searched keys
    description: str = ""
    notes: list[str] = field(default_factory=list)  # data/profile, pinned axes, timings
    plots: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name)
    best_line: str = ""  # which trial is best and where its config is
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, lines) after
    # the tables: what the data check dropped, the crashes and retries


@dataclass
class Point:
    """One grid point: its label values and the finished trials (one per seed)."""

    values: tuple[Any, ...]
    rows: list[dict[str, Any]]

    def metric(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.rows if _valid(r.get(name))]

    def summary(self, name: str) -> Summary | None:
        xs = self.metric(name)
        return summarize(xs) if xs else None


def group_points(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[Point]:
    """Finished rows grouped by grid point, in the order the points first appear."""
    points: dict[tuple[Any, ...], Point] = {}
    for r in rows:
        if r.get("status") not in RESULT_STATUSES:
            continue
        key = tuple(r.get(a) for a in axes)
        points.setdefault(key, Point(key, [])).rows.append(r)
    return list(points.values())


def fmt(v: float | None, digits: int = DIGITS, sign: bool = False) -> str:
    if v is None:
        return "–"
    if abs(v) < 0.5 * 10**-digits:
        v = 0.0  # never "-0.000"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _best(values: list[float | None], mode: str = "max") -> float | None:
    """The best value as shown (ties all bold); None when every row shows the same number,
    as a "best" that is everyone's says nothing."""
    shown = [round(v, DIGITS) for v in values if v is not None]
    if len(set(shown)) < 2:
        return None
    return max(shown) if mode == "max" else min(shown)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def _run_cells(p: Point) -> list[str]:
    t, ips, par = p.summary("train_time_s"), p.summary("images_per_s"), p.summary("params")
    return [
        f"{t.mean / 60:.1f}" if t else "–",
        f"{ips.mean:.1f}" if ips else "–",
        f"{par.mean / 1e6:.2f}" if par else "–",
    ]


def ablation_tables(inp: ReportInput) -> list[str]:
    """The main table (and with seeds the two interval tables)."""
    points = group_points(inp.rows, inp.axes)
    if not points:
        return ["No finished trials yet."]
    base_key = tuple(inp.baseline.get(a) for a in inp.axes) if inp.baseline else None
    base = next((p for p in points if p.values == base_key), None)
    stand_in = base is None and base_key is not None
    if stand_in:
        base = nearest_point(points, base_key)
    seeds = max(len(p.rows) for p in points)
    sums = {m: [p.summary(m) for p in points] for m in COCO_METRICS}
    best = {m: _best([s.mean if s else None for s in sums[m]]) for m in COCO_METRICS}
    diffs: dict[str, list[Difference | None]] = {}
    for m in COCO_METRICS:
        b = base.metric(m) if base else []
        diffs[m] = [
            welch(p.metric(m), b) if b and p.metric(m) and p is not base else None for p in points
        ]

    def label(p: Point) -> list[str]:
        cells = [str(v) for v in p.values]
        if p is base:
            if stand_in:
                cells[0] += " (reference)"
            elif inp.stand_in_for:
                replaced = "/".join(map(str, inp.stand_in_for.values()))
                cells[0] += f" (baseline, stand-in for {replaced})"
            else:
                cells[0] += " (baseline)"
        return cells

    header = [*inp.axes, *COCO_METRICS, "train min", "img/s", "params M"]
    body = []
    for i, p in enumerate(points):
        cells = label(p)
        for m in COCO_METRICS:
            s = sums[m][i]
            if s is None:
                cells.append("–")
                continue
            text = fmt(s.mean)
            if best[m] is not None and round(s.mean, DIGITS) == best[m]:
                text = f"**{text}**"
            if seeds > 1:
                text += f" ± {fmt(s.std)}"
            d = diffs[m][i]
            if d is not None:
                text += f" ({fmt(d.diff, sign=True)}{'*' if d.significant else ''})"
            cells.append(text)
        body.append(cells + _run_cells(p))
    lines = _table(header, body)
    lines.append("")
    legend = ["COCO AP/AR at maxDets 1000 (AR_100/300 at 100/300); best per column in **bold**"]
    if base is not None and stand_in:
        named = ", ".join(f"{a}={v}" for a, v in zip(inp.axes, base.values, strict=True))
        legend.append(
            f"(+x.xxx) / (-x.xxx) after a value = its difference from the reference row {named}: "
            f"the baseline "
            f"{_point_text(inp.baseline)} has no finished trial, so the nearest finished grid "
            "point stands in"
        )
    elif base is not None:
        legend.append("(+x.xxx) / (-x.xxx) after a value = its difference from the baseline row")
    if base is not None and inp.stand_in_for and not stand_in:
        legend.append(
            f"the baseline row stands in for the study's {_point_text(inp.stand_in_for)}, "
            "which cannot run in this profile"
        )
    if seeds > 1:
        legend.append(
            "a ± b = mean ± sample std over seeds; * after a difference = its Welch 95% "
            "interval excludes 0"
        )
    lines.append("; ".join(legend) + ".")
    if seeds > 1:
        lines += ["", "### 95% confidence interval of each mean (Student t, n seeds)", ""]
        ci_body = [
            label(p)
            + [
                f"[{fmt(s.lo)}, {fmt(s.hi)}]" if s and s.lo is not None else "–"
                for s in (sums[m][i] for m in COCO_METRICS)
            ]
            + [str(len(p.rows))]
            for i, p in enumerate(points)
        ]
        lines += _table([*inp.axes, *COCO_METRICS, "n"], ci_body)
        if base is not None:
            lines += ["", "### Difference from the baseline (Welch 95% interval)", ""]
            d_body = []
            for i, p in enumerate(points):
                cells = label(p)
                for m in COCO_METRICS:
                    d = diffs[m][i]
                    if d is None:
                        cells.append("–")
                    elif d.lo is None:
                        cells.append(f"{fmt(d.diff, sign=True)} (no interval)")
                    else:
                        star = "*" if d.significant else ""
                        cells.append(
                            f"{fmt(d.diff, sign=True)} [{fmt(d.lo, sign=True)}, "
                            f"{fmt(d.hi, sign=True)}]{star}"
                        )
                d_body.append(cells)
            lines += _table([*inp.axes, *COCO_METRICS], d_body)
    return lines


def sampled_table(inp: ReportInput) -> list[str]:
    """Sampled studies: one row per trial, best first."""
    rows = [r for r in inp.rows if r.get("status") in RESULT_STATUSES and _valid(r.get(inp.metric))]
    rows.sort(key=lambda r: float(r[inp.metric]), reverse=inp.mode == "max")
    if not rows:
        return ["No finished trials yet."]
    best = {
        m: _best([float(r[m]) if _valid(r.get(m)) else None for r in rows]) for m in COCO_METRICS
    }
    body = []
    for r in rows:
        cells = [r["id"], r["status"], *(_param(r.get(k)) for k in inp.sampled_keys)]
        for m in COCO_METRICS:
            v = float(r[m]) if _valid(r.get(m)) else None
            text = fmt(v)
            cells.append(f"**{text}**" if v is not None and round(v, DIGITS) == best[m] else text)
        cells.append(str(r.get("epoch") or "–"))
        body.append(cells)
    return _table(["id", "status", *inp.sampled_keys, *COCO_METRICS, "epoch"], body)


def nearest_point(points: Sequence[Point], key: tuple[Any, ...]) -> Point | None:
    """The point that differs from ``key`` on the fewest axes (the first such in table order):
    the reference row when the baseline itself did not run, e.g. the quick start's coco/iou/s
    skipped offline is stood in for by center_loss/iou/s."""
    if not points:
        return None
    return min(points, key=lambda p: sum(a != b for a, b in zip(p.values, key, strict=True)))


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


ASSIGN_HEADERS = {  # model.yolox.loss.ASSIGN_DIAGNOSTICS, as the report's columns say them
    "pos_per_obj_lt16": "positives / object < 16 px",
    "pos_per_obj_16_32": "16–32 px",
    "pos_per_obj_32_96": "32–96 px",
    "pos_per_obj_gt96": "> 96 px",
    "no_pos_share": "objects without a positive",
    "pos_mean_iou": "mean IoU of positives",
}


def assignment_section(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[str]:
    """Label-assignment diagnostics of each grid point's last evaluated epoch (mean over seeds);
    [] when no trial reported them."""
    points = [p for p in group_points(rows, axes) if any(p.metric(k) for k in ASSIGN_HEADERS)]
    if not points or not axes:
        return []
    body = []
    for p in points:
        cells = [str(v) for v in p.values]
        for key in ASSIGN_HEADERS:
            sm = p.summary(key)
            cells.append("–" if sm is None else f"{sm.mean:.2f}")
        body.append(cells)
    lines = _table([*axes, *ASSIGN_HEADERS.values()], body)
    lines += [
        "",
        "Positives per object by the object's size (sqrt of its area in input pixels), averaged "
        "over the last evaluated epoch's training batches: the number the label assigner gives "
        "tiny objects.",
    ]
    return lines


def render_report(inp: ReportInput) -> str:
    counts: dict[str, int] = {}
    for r in inp.rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    out = [f"# {inp.title}", ""]
    if inp.description:
        out += [inp.description, ""]
    out.append("Trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    out += [f"- {n}" for n in inp.notes]
    out.append("")
    if inp.best_line:
        out += [inp.best_line, ""]
    out += ["## Results", ""]
    out += ablation_tables(inp) if inp.axes else sampled_table(inp)
    not_run = [r for r in inp.rows if r.get("status") not in RESULT_STATUSES]
    if not_run:
        out += ["", "## Not run or not finished", ""]
        out += _table(
            ["id", "status", "reason"],
            [[r["id"], r.get("status", ""), str(r.get("reason") or "")] for r in not_run],
        )
    for title, lines in inp.sections:
        out += ["", f"## {title}", "", *lines]
    if inp.plots:
        out += ["", "## Plots", ""]
        for caption, name in inp.plots:
            out += [f"![{caption}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"
