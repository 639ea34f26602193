"""``report.md``: the ablation table in the FloW study's style and the findings it supports.

What the report quotes (issue 23): the **test** split's numbers, each trial's scored once on the
checkpoint chosen on the **validation** split (the best trial is also chosen on validation:
``val <metric>`` column). A dataset without a test split is quoted on validation, and the report
says that those numbers were also used for the choices.

* **The table.** Rows are grid points (pretraining × loss × size for the ablation space), columns
  the 12 COCO numbers, the validation figure the choices used, then training time, images/s and
  parameters. Every cell carries its difference from the baseline row (descriptive, no stars)
  and the best value of each column is bold; with repeated seeds a cell is ``mean ± std``.
* **Intervals.** Two kinds of noise, each with its own interval: *seeds* (training noise: another
  seed of the same config ends elsewhere) — the t interval over seeds; *test images* (which images
  happened to be tested) — a bootstrap over the test images (model/bootstrap.py). Both are shown
  where both exist.
* **Findings.** The comparisons are the one-factor contrasts of the grid: each value of an axis
  against the baseline's value of that axis, the other axes equal (``reg_loss ciou vs iou at
  pretrain=center_loss``). On the primary metric (the space's ``metric``, mAP by default) each
  gets a paired interval when the two arms share seeds (the per-seed differences), Welch's
  otherwise, a Holm-adjusted p-value over all the comparisons, and the paired test-image bootstrap
  of the mean difference. A comparison is written "helps" / "hurts" only when its Holm-adjusted
  p is below 0.05 *and* its test-image interval (where there is one) excludes 0; anything else is
  "not separated at this budget". The other metrics are shown with their intervals, without
  stars or verdicts.

COCO reports -1 for an area range without ground truth (e.g. AP_large on FloW): shown as "–" and
left out of means, differences and the best-value marks.

Ray-free: it takes plain row dicts (``results.csv``) and the per-image evaluations, so it is
tested on hand-made tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model.assign.diagnostics import ASSIGN_DIAGNOSTICS
from model.coco_eval import COCO_METRICS
from study.layout import RESULT_STATUSES, valid_metric
from study.outputs.stats import ALPHA, Difference, Summary, compare, holm, summarize

if TYPE_CHECKING:
    from model.bootstrap import Interval, PerImageEval

DIGITS = 3  # COCO numbers as the FloW study prints them
SECONDARY = ("AP50",)  # also given a test-image interval per grid point


@dataclass
class ReportInput:
    title: str
    rows: list[dict[str, Any]]
    axes: list[str]  # grid axes (row labels); empty for a sampled study
    baseline: dict[str, Any] = field(default_factory=dict)
    stand_in_for: dict[str, Any] = field(default_factory=dict)  # what the baseline replaces
    metric: str = "mAP"  # the primary metric (the space's): selection on val_, findings on test_
    mode: str = "max"
    sampled_keys: list[str] = field(default_factory=list)  # sampled studies: the searched keys
    description: str = ""
    notes: list[str] = field(default_factory=list)  # data/profile, pinned axes, timings
    plots: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name)
    best_line: str = ""  # which trial is best and where its config is
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, lines) after
    # the tables: the seeds the study added, what the data check dropped, the crashes
    # trial id -> its test split's per-image evaluation (trials/<id>/test_eval.npz), loaded on
    # demand: the bootstrap intervals
    per_image: Callable[[str], PerImageEval | None] = lambda tid: None
    bootstrap_seed: int = 0
    resamples: int = 1000


def quoted_split(rows: Sequence[dict[str, Any]]) -> str:
    """"test" when any finished trial has test figures, else "val" (a dataset without a test
    split: the report then quotes the split its choices were made on, and says so)."""
    for r in rows:
        if r.get("status") in RESULT_STATUSES and valid_metric(r.get("test_mAP")):
            return "test"
    return "val"


@dataclass
class Point:
    """One grid point: its label values and the finished trials (one per seed)."""

    values: tuple[Any, ...]
    rows: list[dict[str, Any]]

    def metric(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.rows if valid_metric(r.get(name))]

    def by_seed(self, name: str) -> dict[int, float]:
        """seed -> value (a seed given twice keeps its last row)."""
        return {
            int(r.get("seed") or 0): float(r[name]) for r in self.rows
            if valid_metric(r.get(name))
        }

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


def fmt_interval(lo: float | None, hi: float | None, sign: bool = False) -> str:
    return "–" if lo is None or hi is None else f"[{fmt(lo, sign=sign)}, {fmt(hi, sign=sign)}]"


def _best(values: list[float | None], mode: str = "max") -> float | None:
    """The best value as shown (ties all bold); None when every row shows the same number,
    as a "best" that is everyone's says nothing."""
    shown = [round(v, DIGITS) for v in values if v is not None]
    if len(set(shown)) < 2:
        return None
    return max(shown) if mode == "max" else min(shown)


def table(header: list[str], body: list[list[str]]) -> list[str]:
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


# --- the grid table ---------------------------------------------------------------------------


@dataclass
class Grid:
    """The grid points of a report with their baseline (or the point standing in for it)."""

    inp: ReportInput
    points: list[Point]
    base: Point | None
    stand_in: bool  # the baseline did not finish: the nearest point is the reference
    split: str  # "test" or "val": the split the tables quote

    @classmethod
    def of(cls, inp: ReportInput) -> Grid:
        points = group_points(inp.rows, inp.axes)
        base_key = tuple(inp.baseline.get(a) for a in inp.axes) if inp.baseline else None
        base = next((p for p in points if p.values == base_key), None)
        stand_in = base is None and base_key is not None
        if stand_in:
            base = nearest_point(points, base_key)
        return cls(inp, points, base, stand_in, quoted_split(inp.rows))

    def key(self, metric: str) -> str:
        return f"{self.split}_{metric}"

    @property
    def seeds(self) -> int:
        return max((len(p.rows) for p in self.points), default=0)

    def label(self, p: Point) -> list[str]:
        cells = [str(v) for v in p.values]
        if p is self.base:
            if self.stand_in:
                cells[0] += " (reference)"
            elif self.inp.stand_in_for:
                replaced = "/".join(map(str, self.inp.stand_in_for.values()))
                cells[0] += f" (baseline, stand-in for {replaced})"
            else:
                cells[0] += " (baseline)"
        return cells


def main_table(g: Grid) -> list[str]:
    inp = g.inp
    sums = {m: [p.summary(g.key(m)) for p in g.points] for m in COCO_METRICS}
    best = {m: _best([s.mean if s else None for s in sums[m]]) for m in COCO_METRICS}
    header = [*inp.axes, *COCO_METRICS, f"val {inp.metric}", "n", "train min", "img/s",
              "params M"]
    body = []
    for i, p in enumerate(g.points):
        cells = g.label(p)
        for m in COCO_METRICS:
            s = sums[m][i]
            if s is None:
                cells.append("–")
                continue
            text = fmt(s.mean)
            if best[m] is not None and round(s.mean, DIGITS) == best[m]:
                text = f"**{text}**"
            if g.seeds > 1:
                text += f" ± {fmt(s.std)}"
            b = g.base.metric(g.key(m)) if g.base is not None else []
            if b and p is not g.base:
                text += f" ({fmt(s.mean - summarize(b).mean, sign=True)})"
            cells.append(text)
        v = p.summary(f"val_{inp.metric}")
        cells += [fmt(v.mean) if v else "–", str(len(p.rows)), *_run_cells(p)]
        body.append(cells)
    return [*table(header, body), "", _legend(g)]


def _legend(g: Grid) -> str:
    inp = g.inp
    what = (
        f"{g.split} split: each trial's checkpoint chosen on the validation split, then "
        "scored once on test" if g.split == "test" else
        "validation split — the dataset has no test split, so these are the numbers the "
        "checkpoints and the best trial were chosen on (optimistic for the best)"
    )
    legend = [
        f"COCO AP/AR on the {what}; AP at maxDets 1000 (AR_100/300 at 100/300); "
        f"`val {inp.metric}` = the validation figure the choices used; n = seeds; best per "
        "column in **bold**"
    ]
    if g.base is not None and g.stand_in:
        named = ", ".join(f"{a}={v}" for a, v in zip(inp.axes, g.base.values, strict=True))
        legend.append(
            f"(+x.xxx) / (-x.xxx) after a value = its difference from the reference row {named}: "
            f"the baseline {_point_text(inp.baseline)} has no finished trial, so the nearest "
            "finished grid point stands in"
        )
    elif g.base is not None:
        legend.append(
            "(+x.xxx) / (-x.xxx) after a value = its difference from the baseline row "
            "(descriptive: the findings below say which differences hold)"
        )
    if g.base is not None and inp.stand_in_for and not g.stand_in:
        legend.append(
            f"the baseline row stands in for the study's {_point_text(inp.stand_in_for)}, "
            "which cannot run in this profile"
        )
    if g.seeds > 1:
        legend.append("a ± b = mean ± sample std over seeds")
    return "; ".join(legend) + "."


# --- intervals of each grid point -------------------------------------------------------------


def _mean_bootstrap(g: Grid, p: Point) -> dict[str, Interval] | None:
    """The test-image bootstrap of the point's mean over seeds; None without every seed's
    per-image evaluation."""
    if g.split != "test":
        return None
    runs = [g.inp.per_image(r["id"]) for r in p.rows if valid_metric(r.get("test_mAP"))]
    if not runs or any(r is None for r in runs):
        return None
    from model.bootstrap import bootstrap_mean_ci

    return bootstrap_mean_ci(runs, resamples=g.inp.resamples, seed=g.inp.bootstrap_seed)


def interval_table(g: Grid) -> list[str]:
    """Per grid point and for the primary metric and AP50: the seed interval and the test-image
    interval of its mean; [] when neither exists anywhere."""
    metrics = list(dict.fromkeys([g.inp.metric, *SECONDARY]))
    body, any_interval = [], False
    for p in g.points:
        boot = _mean_bootstrap(g, p)
        cells = [*g.label(p), str(len(p.rows))]
        for m in metrics:
            s = p.summary(g.key(m))
            seed_iv = fmt_interval(s.lo, s.hi) if s else "–"
            iv = boot.get(m) if boot else None
            boot_iv = fmt_interval(iv.lo, iv.hi) if iv else "–"
            any_interval |= seed_iv != "–" or boot_iv != "–"
            cells += [seed_iv, boot_iv]
        body.append(cells)
    if not any_interval:
        return []
    header = [*g.inp.axes, "n"]
    for m in metrics:
        header += [f"{m}: seeds (t)", f"{m}: test images (bootstrap)"]
    return [
        f"### 95% intervals of each grid point's mean ({g.split} split)",
        "",
        *table(header, body),
        "",
        "Two kinds of noise, each with its interval: *seeds* — training noise, the t interval "
        "over the seeds run (none with one seed); *test images* — which images happened to be "
        f"tested, a bootstrap of the seed mean over {g.inp.resamples} resampled test sets "
        "(percentile interval, the same resampled sets for every trial).",
    ]


# --- findings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One one-factor contrast: ``arm`` against ``ref``, which differ on ``axis`` only."""

    axis: str
    arm: Point
    ref: Point
    at: str  # the other axes' values, "pretrain=center_loss"

    @property
    def name(self) -> str:
        i = self.arm_index
        return f"{self.axis} {self.arm.values[i]} vs {self.ref.values[i]}"

    @property
    def arm_index(self) -> int:
        return next(i for i, (a, b) in enumerate(zip(self.arm.values, self.ref.values,
                                                      strict=True)) if a != b)


def comparisons(
    points: Sequence[Point], axes: Sequence[str], baseline: Mapping[str, Any]
) -> list[Comparison]:
    """Every one-factor contrast of the grid: for each axis, each point whose value differs
    from the reference value of that axis (the baseline's; without a baseline the first value
    in table order) against the point that has the reference value and the same other values."""
    index = {p.values: p for p in points}
    out = []
    for i, axis in enumerate(axes):
        values = list(dict.fromkeys(p.values[i] for p in points))
        if len(values) < 2:
            continue
        ref_value = baseline.get(axis, values[0]) if baseline else values[0]
        for p in points:
            if p.values[i] == ref_value:
                continue
            ref = index.get((*p.values[:i], ref_value, *p.values[i + 1:]))
            if ref is None:
                continue
            at = ", ".join(f"{a}={v}" for j, (a, v) in enumerate(zip(axes, p.values,
                                                                    strict=True)) if j != i)
            out.append(Comparison(axis, p, ref, at))
    return out


@dataclass(frozen=True)
class Finding:
    comparison: Comparison
    seeds: Difference  # on the primary metric, paired or Welch
    holm_p: float | None
    images: Interval | None  # the paired test-image bootstrap of the mean difference
    verdict: str  # "helps", "hurts" or "not separated at this budget"
    why: str  # what the verdict rests on, or what is missing

    @property
    def decided(self) -> bool:
        return self.verdict in ("helps", "hurts")


def _paired_bootstrap(g: Grid, c: Comparison) -> Interval | None:
    """The test-image bootstrap of mean(arm) − mean(ref) over the seeds they share (all runs
    when they share fewer than two), on the same resampled images for every run."""
    if g.split != "test":
        return None
    a = {int(r.get("seed") or 0): r["id"] for r in c.arm.rows if valid_metric(r.get("test_mAP"))}
    b = {int(r.get("seed") or 0): r["id"] for r in c.ref.rows if valid_metric(r.get("test_mAP"))}
    common = sorted(set(a) & set(b))
    ids_a = [a[k] for k in common] if len(common) >= 2 else list(a.values())
    ids_b = [b[k] for k in common] if len(common) >= 2 else list(b.values())
    runs_a = [g.inp.per_image(t) for t in ids_a]
    runs_b = [g.inp.per_image(t) for t in ids_b]
    if not runs_a or not runs_b or any(r is None for r in [*runs_a, *runs_b]):
        return None
    from model.bootstrap import paired_bootstrap

    found = paired_bootstrap(runs_a, runs_b, resamples=g.inp.resamples,
                             seed=g.inp.bootstrap_seed)
    return found.get(g.inp.metric)


def findings(g: Grid) -> list[Finding]:
    """The comparisons on the primary metric with their intervals and verdicts (Holm over all
    of them)."""
    key = g.key(g.inp.metric)
    comps = [
        c for c in comparisons(g.points, g.inp.axes, g.inp.baseline)
        if c.arm.metric(key) and c.ref.metric(key)
    ]
    diffs = [compare(c.arm.by_seed(key), c.ref.by_seed(key)) for c in comps]
    adjusted = holm([d.p for d in diffs])
    out = []
    for c, d, p in zip(comps, diffs, adjusted, strict=True):
        boot = _paired_bootstrap(g, c)
        out.append(Finding(c, d, p, boot, *_verdict(d, p, boot, g.inp.mode)))
    return out


def _verdict(
    d: Difference, holm_p: float | None, boot: Interval | None, mode: str
) -> tuple[str, str]:
    undecided = "not separated at this budget"
    if d.method == "none":
        if d.n < 2:
            return undecided, "one seed per arm: training noise is not measured"
        return undecided, "no spread between seeds: no interval is claimed"
    assert holm_p is not None
    if holm_p >= ALPHA:
        return undecided, f"Holm-adjusted p {holm_p:.3f} ≥ {ALPHA:.2f}"
    if boot is not None and boot.lo <= 0.0 <= boot.hi:
        return undecided, "the test-image interval contains 0"
    better = d.diff > 0 if mode == "max" else d.diff < 0
    rests = "seeds" + (" and test images" if boot is not None else "")
    return ("helps" if better else "hurts"), f"{rests} both exclude 0" if boot else rests


def findings_section(g: Grid) -> list[str]:
    found = findings(g)
    if not found:
        return []
    m = g.inp.metric
    body = []
    for f in found:
        d = f.seeds
        how = {"paired": f"paired, {d.n} seeds", "welch": "Welch, unpaired",
               "none": f"{d.n} seed(s)"}[d.method]
        body.append([
            f.comparison.name,
            f.comparison.at or "–",
            how,
            fmt(d.diff, sign=True),
            fmt_interval(d.lo, d.hi, sign=True),
            "–" if f.holm_p is None else f"{f.holm_p:.3f}",
            fmt_interval(f.images.lo, f.images.hi, sign=True) if f.images else "–",
            f"**{f.verdict}**" if f.decided else f.verdict,
            f.why,
        ])
    decided = sum(f.decided for f in found)
    lines = [
        f"Primary metric: **{g.split} {m}** (the space's metric). {decided} of {len(found)} "
        f"comparisons decided at this budget.",
        "",
        *table(
            ["comparison", "at", "seeds", f"Δ {m}", "seed interval (95%)", "p (Holm)",
             "test-image interval (95%)", "verdict", "why"],
            body,
        ),
        "",
        "Each comparison changes one axis against the baseline's value of it, the other axes "
        "equal. *Seed interval*: training noise — paired over the seeds both arms ran (seed k of "
        "each arm starts from the same initialisation and data order; the per-seed differences' "
        "t interval), Welch's unpaired interval where they share fewer than two seeds. *p "
        f"(Holm)*: the comparison's p-value, Holm-adjusted over these {len(found)} comparisons "
        "(family-wise error 5%). *Test-image interval*: which images were tested — a paired "
        f"bootstrap of the mean difference, {g.inp.resamples} resampled test sets, the same "
        "images for both arms. A comparison is written **helps** / **hurts** only when its Holm "
        "p is below 0.05 and its test-image interval excludes 0; otherwise it is not separated "
        "at this budget — more seeds (`--seeds N`, or `--seeds auto`) may separate it.",
    ]
    lines += ["", *_all_metrics_table(g, found)]
    return lines


def _all_metrics_table(g: Grid, found: Sequence[Finding]) -> list[str]:
    """The same comparisons on every metric, with their seed intervals and no stars."""
    body = []
    for f in found:
        c = f.comparison
        cells = [c.name, c.at or "–"]
        for m in COCO_METRICS:
            if not c.arm.metric(g.key(m)) or not c.ref.metric(g.key(m)):
                cells.append("–")
                continue
            d = compare(c.arm.by_seed(g.key(m)), c.ref.by_seed(g.key(m)))
            if d.lo is None:
                cells.append(fmt(d.diff, sign=True))
            else:
                cells.append(f"{fmt(d.diff, sign=True)} {fmt_interval(d.lo, d.hi, sign=True)}")
        body.append(cells)
    return [
        f"### Every metric, the same comparisons ({g.split} split; seed intervals, no stars: "
        f"{g.inp.metric} is the primary metric)",
        "",
        *table(["comparison", "at", *COCO_METRICS], body),
    ]


# --- sampled studies --------------------------------------------------------------------------


def sampled_table(inp: ReportInput) -> list[str]:
    """Sampled studies: one row per trial, best (on validation) first."""
    split = quoted_split(inp.rows)
    select = f"val_{inp.metric}"
    rows = [
        r for r in inp.rows
        if r.get("status") in RESULT_STATUSES and valid_metric(r.get(select))
    ]
    rows.sort(key=lambda r: float(r[select]), reverse=inp.mode == "max")
    if not rows:
        return ["No finished trials yet."]
    key = {m: f"{split}_{m}" for m in COCO_METRICS}
    best = {
        m: _best([float(r[key[m]]) if valid_metric(r.get(key[m])) else None for r in rows])
        for m in COCO_METRICS
    }
    body = []
    for r in rows:
        cells = [r["id"], r["status"], *(_param(r.get(k)) for k in inp.sampled_keys)]
        for m in COCO_METRICS:
            v = float(r[key[m]]) if valid_metric(r.get(key[m])) else None
            text = fmt(v)
            cells.append(f"**{text}**" if v is not None and round(v, DIGITS) == best[m] else text)
        lo, hi = r.get(f"test_{inp.metric}_lo"), r.get(f"test_{inp.metric}_hi")
        cells += [
            fmt_interval(lo, hi) if valid_metric(lo) and valid_metric(hi) else "–",
            fmt(float(r[select])),
            str(r.get("epoch") or "–"),
        ]
        body.append(cells)
    header = ["id", "status", *inp.sampled_keys, *COCO_METRICS,
              f"{inp.metric} test-image interval", f"val {inp.metric}", "epoch"]
    return [
        *table(header, body),
        "",
        f"Rows in the order of `val {inp.metric}` (the validation split every choice is made "
        f"on); the metric columns are the {split} split's"
        + (", scored once per trial on its chosen checkpoint" if split == "test" else
           " (no test split: the choices were made on these numbers)")
        + f"; the interval is a bootstrap over the test images ({inp.resamples} resamples).",
    ]


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


# --- assignment diagnostics -------------------------------------------------------------------

ASSIGN_HEADERS = dict(zip(ASSIGN_DIAGNOSTICS, (  # the report's column names, in that order
    "positives / object < 16 px",
    "16–32 px",
    "32–96 px",
    "> 96 px",
    "objects without a positive",
    "mean IoU of positives",
), strict=True))


def assignment_section(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[str]:
    """Label-assignment diagnostics of each grid point's last evaluated epoch: the mean over
    seeds with its 95% t interval (as the metric columns); [] when no trial reported them."""
    points = [p for p in group_points(rows, axes) if any(p.metric(k) for k in ASSIGN_HEADERS)]
    if not points or not axes:
        return []
    seeds = max(len(p.rows) for p in points)
    body = []
    for p in points:
        cells = [str(v) for v in p.values]
        for key in ASSIGN_HEADERS:
            s = p.summary(key)
            if s is None:
                cells.append("–")
            elif s.lo is None or not s.std:  # one seed, or seeds that agree exactly
                cells.append(f"{s.mean:.2f}")
            else:
                cells.append(f"{s.mean:.2f} [{s.lo:.2f}, {s.hi:.2f}]")
        body.append(cells + [str(len(p.rows))])
    lines = table([*axes, *ASSIGN_HEADERS.values(), "n"], body)
    lines += [
        "",
        "Positives per object by the object's size (sqrt of its area in input pixels), averaged "
        "over the last evaluated epoch's training batches: the number the label assigner gives "
        "tiny objects"
        + ("; mean over seeds [95% t interval over seeds]." if seeds > 1 else
           "; one seed per grid point, so no interval."),
    ]
    return lines


# --- the report -------------------------------------------------------------------------------


def grid_sections(inp: ReportInput) -> list[str]:
    g = Grid.of(inp)
    if not g.points:
        return ["No finished trials yet."]
    lines = main_table(g)
    intervals = interval_table(g)
    if intervals:
        lines += ["", *intervals]
    found = findings_section(g)
    if found:
        lines += ["", "## Findings", "", *found]
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
    out += grid_sections(inp) if inp.axes else sampled_table(inp)
    not_run = [r for r in inp.rows if r.get("status") not in RESULT_STATUSES]
    if not_run:
        out += ["", "## Not run or not finished", ""]
        out += table(
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
