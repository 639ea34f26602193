"""Report, statistics, results table, best-config export and plots — on hand-made tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from model.coco_eval import COCO_METRICS
from model.config import TrialConfig, config_from_dict, load_config
from study.outputs.export import choose_best, export_best
from study.outputs.plots import plot_by_axis, plot_learning_curves
from study.outputs.report import ReportInput, render_report
from study.outputs.results import read_csv, read_history, write_csv
from study.outputs.stats import summarize, t_quantile, welch

AXES = ["pretrain", "reg_loss"]


def row(
    tid: str, pretrain: str, loss: str, status: str = "done", val: dict | None = None,
    **metrics: float,
) -> dict:
    """A results row: ``metrics`` are its test figures (the report quotes them); its validation
    figures (what choices use) are the same unless ``val`` says otherwise."""
    base = {m: 0.5 for m in COCO_METRICS}
    base.update(AP_large=-1.0, AR_large=-1.0)  # COCO: no large objects in the eval set
    base.update(metrics)
    vals = {**base, **(val or {})}
    return {
        "id": tid,
        "status": status,
        "reason": "",
        "pretrain": pretrain,
        "reg_loss": loss,
        "epoch": 300,
        "train_time_s": 600.0,
        "images_per_s": 50.0,
        "params": 9_000_000,
        **{f"test_{m}": v for m, v in base.items()},
        **{f"val_{m}": v for m, v in vals.items()},
    }


def table_row(report: str, startswith: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| {startswith} "):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no row {startswith!r} in\n{report}")


def col(name: str) -> int:
    return len(AXES) + COCO_METRICS.index(name)


# --- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "t"),  # two-sided 95% critical values from a printed t table
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (30, 2.042)],
)
def test_t_quantile_matches_the_table(df: int, t: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=5e-4)


def test_t_quantile_fractional_df_lies_between_neighbours() -> None:
    # Welch's df is fractional; the quantile must fall between the integer neighbours
    assert t_quantile(0.975, 3) < t_quantile(0.975, 2.5) < t_quantile(0.975, 2)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)


def test_summarize_by_hand() -> None:
    s = summarize([0.30, 0.32, 0.34])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.32), pytest.approx(0.02))
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert (s.lo, s.hi) == (pytest.approx(0.32 - half), pytest.approx(0.32 + half))
    one = summarize([0.4])
    assert (one.std, one.lo, one.hi) == (None, None, None)


def test_welch_by_hand() -> None:
    # b - a: diff 0.04; se^2 = 0.02^2/3 + 0.01^2/3; df = se^4 / sum((s^2/n)^2 / (n-1)) = 50/17
    d = welch([0.35, 0.36, 0.37], [0.30, 0.32, 0.34])
    assert d.diff == pytest.approx(0.04)
    assert d.df == pytest.approx(50 / 17)
    se = math.sqrt(0.02**2 / 3 + 0.01**2 / 3)
    half = t_quantile(0.975, 50 / 17) * se
    assert half == pytest.approx(0.0415540, abs=1e-6)  # scipy: ttest_ind(..., equal_var=False)
    assert (d.lo, d.hi) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert not d.significant  # [-0.0016, 0.0816] contains 0
    assert welch([0.40, 0.41, 0.42], [0.30, 0.32, 0.34]).significant  # [0.048, 0.132]
    assert welch([0.4], [0.3, 0.32]).lo is None  # one run: no interval claimed
    assert welch([0.4, 0.4], [0.3, 0.3]).lo is None  # no variance at all: none either


# --- the report -------------------------------------------------------------------------------


def single_seed_rows() -> list[dict[str, Any]]:
    return [
        row("coco-iou", "coco", "iou", mAP=0.325, AP50=0.700),
        row("ssl-iou", "ssl", "iou", mAP=0.350, AP50=0.720),
        row("ssl-ciou", "ssl", "ciou", mAP=0.383, AP50=0.710),
        {
            "id": "center-iou",
            "status": "skipped",
            "pretrain": "center_loss",
            "reg_loss": "iou",
            "reason": "COCO weights for YOLOX-s unavailable",
        },
        {
            "id": "center-ciou",
            "status": "error",
            "pretrain": "center_loss",
            "reg_loss": "ciou",
            "reason": "RuntimeError: boom",
        },
    ]


def test_report_delta_bold_and_missing_values() -> None:
    report = render_report(
        ReportInput(
            title="t",
            rows=single_seed_rows(),
            axes=AXES,
            baseline={"pretrain": "coco", "reg_loss": "iou"},
        )
    )
    base = table_row(report, "coco (baseline)")
    assert base[col("mAP")] == "0.325" and base[col("AP50")] == "0.700"
    ciou = table_row(report, "ssl | ciou")
    assert ciou[col("mAP")] == "**0.383** (+0.058)"  # best mAP, 0.383 - 0.325
    assert ciou[col("AP50")] == "0.710 (+0.010)"
    iou = table_row(report, "ssl | iou")
    assert iou[col("mAP")] == "0.350 (+0.025)"
    assert iou[col("AP50")] == "**0.720** (+0.020)"  # best AP50 is another row
    tie = render_report(
        ReportInput(
            title="t", rows=[*single_seed_rows(), row("x", "x", "iou", mAP=0.383)], axes=AXES
        )
    )
    assert table_row(tie, "ssl | ciou")[col("mAP")] == "**0.383**"  # tied best: both bold
    assert table_row(tie, "x")[col("mAP")] == "**0.383**"
    assert ciou[col("AP_large")] == "–"  # COCO's -1: not a number to compare
    assert iou[col("AR_100")] == "0.500 (+0.000)"  # every row ties: no bold; never "-0.000"
    # val mAP (what chose), n seeds, train min, img/s, params
    assert base[len(AXES) + len(COCO_METRICS) :] == ["0.325", "1", "10.0", "50.0", "9.00"]
    assert "COCO AP/AR on the test split: each trial's checkpoint chosen on the validation" in (
        report
    )
    assert "| center-iou | skipped | COCO weights for YOLOX-s unavailable |" in report
    assert "| center-ciou | error | RuntimeError: boom |" in report
    assert "Trials: 3 done, 1 skipped, 1 error." in report


def test_report_without_the_baseline_measures_from_the_nearest_point_and_says_so() -> None:
    # coco-iou did not run: ssl-iou differs from it on one axis, ssl-ciou on two
    rows = [r for r in single_seed_rows() if r["id"] != "coco-iou"]
    report = render_report(
        ReportInput(
            title="t", rows=rows, axes=AXES, baseline={"pretrain": "coco", "reg_loss": "iou"}
        )
    )
    ref = table_row(report, "ssl (reference)")
    assert ref[col("mAP")] == "0.350"  # no difference on the reference row itself
    assert table_row(report, "ssl | ciou")[col("mAP")] == "**0.383** (+0.033)"  # 0.383 - 0.350
    assert (
        "difference from the reference row pretrain=ssl, reg_loss=iou: the baseline "
        "pretrain=coco, reg_loss=iou has no finished trial" in report
    )
    assert "(baseline)" not in report


def test_a_stand_in_baseline_is_labelled_in_the_row_and_the_legend() -> None:
    rows = [
        row("none-iou", "none", "iou", mAP=0.020),
        row("none-ciou", "none", "ciou", mAP=0.030),
    ]
    report = render_report(
        ReportInput(
            title="t",
            rows=rows,
            axes=AXES,
            baseline={"pretrain": "none", "reg_loss": "iou"},
            stand_in_for={"pretrain": "coco"},
        )
    )
    assert table_row(report, "none (baseline, stand-in for coco)")[col("mAP")] == "0.020"
    assert table_row(report, "none | ciou")[col("mAP")] == "**0.030** (+0.010)"
    assert "the baseline row stands in for the study's pretrain=coco" in report
    assert "best per column in **bold**" in report and "(+x.xxx) / (-x.xxx) after a value" in report


def test_report_with_no_finished_point_near_the_baseline_has_no_differences() -> None:
    only = [row("ssl-ciou", "ssl", "ciou", mAP=0.383)]
    report = render_report(
        ReportInput(
            title="t", rows=only, axes=AXES, baseline={"pretrain": "coco", "reg_loss": "iou"}
        )
    )
    # the one finished point is its own reference: nothing to subtract
    assert table_row(report, "ssl (reference)")[col("mAP")] == "0.383"


def seeded_rows() -> list[dict[str, Any]]:
    rows = []
    for name, values in {
        "base": [0.30, 0.32, 0.34],
        "b": [0.35, 0.36, 0.37],
        "c": [0.40, 0.41, 0.42],
    }.items():
        for seed, v in enumerate(values):
            r = row(f"{name}-seed{seed}", name, "iou", mAP=v)
            r["seed"] = seed
            rows.append(r)
    return rows


def test_report_with_seeds_pairs_arms_by_seed_and_holm_adjusts() -> None:
    """b − base per seed: 0.05, 0.04, 0.03 → paired [+0.015, +0.065] (Welch, ignoring the
    pairing, would say [−0.002, +0.082]: test_stats.py); c − base: 0.10, 0.09, 0.08 → mean 0.09,
    the same width. p-values with 2 df: 1 − t/√(2 + t²), t = d̄ √3 / 0.01 → b: t = 4√3, p =
    0.0202; c: t = 9√3, p = 0.00410. Holm over the two: c's 0.0041 · 2 = 0.0082, then b's
    max(0.0082, 0.0202 · 1) = 0.0202: both decided ("helps")."""
    report = render_report(
        ReportInput(
            title="t",
            rows=seeded_rows(),
            axes=AXES,
            baseline={"pretrain": "base", "reg_loss": "iou"},
        )
    )
    main, ci = report.split("### ")[0], report.split("### ")[1]
    assert table_row(main, "base (baseline)")[col("mAP")] == "0.320 ± 0.020"
    assert table_row(main, "b")[col("mAP")] == "0.360 ± 0.010 (+0.040)"  # no stars here
    assert table_row(main, "c")[col("mAP")] == "**0.410** ± 0.010 (+0.090)"
    # 95% CI of the means: 0.32 ± 4.3027*0.02/sqrt(3) = ±0.0497; 0.36 ± 0.0248
    assert table_row(ci, "base (baseline)")[3] == "[0.270, 0.370]"
    assert table_row(ci, "b")[3] == "[0.335, 0.385]" and table_row(ci, "b")[2] == "3"
    findings = report.split("## Findings")[1]
    b = table_row(findings, "pretrain b vs base")
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert b[1:6] == [
        "reg_loss=iou", "paired, 3 seeds", "+0.040",
        f"[{0.04 - half:+.3f}, {0.04 + half:+.3f}]", "0.020",
    ]
    assert b[7] == "**helps**"
    c = table_row(findings, "pretrain c vs base")
    t = 9 * math.sqrt(3)
    assert c[5] == f"{2 * (1 - t / math.sqrt(2 + t * t)):.3f}" == "0.008"  # Holm: 2 · 0.00410
    assert c[7] == "**helps**"
    assert "2 of 2 comparisons decided" in findings
    # AP50 is the same everywhere: shown in the all-metrics table, without an interval
    every = findings.split("### Every metric")[1]
    assert table_row(every, "pretrain b vs base")[2 + COCO_METRICS.index("AP50")] == "+0.000"


def test_holm_can_undo_what_one_comparison_alone_would_decide() -> None:
    """Three comparisons. b − base: 0.05, 0.04, 0.03 (p 0.0202); c and d: per-seed differences
    0.02, 0.00, 0.01 (mean 0.01, sd 0.01, t = √3, p = 1 − √3/√5 = 0.2254). Holm, m = 3: the
    smallest p is tested at 0.05/3: 0.0202 · 3 = 0.0606 > 0.05 — b, decided on its own, is not
    separated among three comparisons."""
    rows = seeded_rows()[:6]  # base and b
    for name in ("c", "d"):
        for seed, v in enumerate([0.32, 0.32, 0.35]):
            r = row(f"{name}-seed{seed}", name, "iou", mAP=v)
            r["seed"] = seed
            rows.append(r)
    report = render_report(
        ReportInput(title="t", rows=rows, axes=AXES, baseline={"pretrain": "base"})
    )
    findings = report.split("## Findings")[1]
    b = table_row(findings, "pretrain b vs base")
    assert b[5] == "0.061" and b[7] == "not separated at this budget"
    assert b[8] == "Holm-adjusted p 0.061 ≥ 0.05"
    assert "0 of 3 comparisons decided" in findings


def test_arms_without_shared_seeds_are_compared_unpaired_and_one_seed_decides_nothing() -> None:
    rows = seeded_rows()[:3]  # base, seeds 0..2
    for seed, v in zip([3, 4, 5], [0.35, 0.36, 0.37], strict=True):  # b ran other seeds
        r = row(f"b-seed{seed}", "b", "iou", mAP=v)
        r["seed"] = seed
        rows.append(r)
    report = render_report(ReportInput(title="t", rows=rows, axes=AXES,
                                       baseline={"pretrain": "base"}))
    b = table_row(report.split("## Findings")[1], "pretrain b vs base")
    assert b[2] == "Welch, unpaired" and b[4] == "[-0.002, +0.082]"
    assert b[7] == "not separated at this budget"
    one = render_report(ReportInput(title="t", rows=single_seed_rows(), axes=AXES,
                                    baseline={"pretrain": "coco", "reg_loss": "iou"}))
    ssl = table_row(one.split("## Findings")[1], "pretrain ssl vs coco")
    assert ssl[2] == "1 seed(s)" and ssl[7] == "not separated at this budget"
    assert ssl[8] == "one seed per arm: training noise is not measured"


def test_a_study_without_a_test_split_quotes_validation_and_says_so() -> None:
    rows = [row("a", "none", "iou", mAP=0.3), row("b", "ssl", "iou", mAP=0.4)]
    for r in rows:
        for k in [k for k in r if k.startswith("test_")]:
            del r[k]
    report = render_report(ReportInput(title="t", rows=rows, axes=AXES,
                                       baseline={"pretrain": "none"}))
    assert "COCO AP/AR on the validation split — the dataset has no test split" in report
    assert table_row(report, "ssl")[col("mAP")] == "**0.400** (+0.100)"


# --- results table, best config, plots --------------------------------------------------------


def test_results_csv_round_trip(tmp_path: Path) -> None:
    cfg = TrialConfig(size="tiny", lr=0.02).to_dict()
    rows = [{**r, **cfg} for r in single_seed_rows()]
    rows[0]["test_mAP"] = float("nan")
    write_csv(rows, tmp_path / "results.csv")
    back = read_csv(tmp_path / "results.csv")
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    assert back[0]["test_mAP"] is None and back[1]["test_mAP"] == 0.350
    assert back[1]["test_AP_large"] == -1.0 and back[1]["val_mAP"] == 0.350
    assert back[1]["lr"] == 0.02 and back[1]["ema"] is True and back[1]["size"] == "tiny"
    assert back[3]["reason"] == "COCO weights for YOLOX-s unavailable"
    assert list(back[0])[:5] == ["id", "status", "reason", "role", "val_mAP"]
    cols = list(back[0])  # validation, then test, then the test-image intervals
    assert cols.index("val_AR_large") < cols.index("test_mAP") < cols.index("test_mAP_lo")


def test_history_keeps_the_last_line_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = ['{"epoch": 1, "mAP": 0.1}', '{"epoch": 2, "mAP": 0.2}', '{"epoch": 2, "mAP": 0.25}']
    path.write_text("\n".join(lines) + '\n{"epoch": 3, "mA')  # the last line cut by a kill
    assert read_history(path) == [{"epoch": 1, "mAP": 0.1}, {"epoch": 2, "mAP": 0.25}]


def test_choose_best_single_and_seeded() -> None:
    rows = single_seed_rows()
    assert choose_best(rows, "mAP", "max", AXES)["id"] == "ssl-ciou"
    assert choose_best(rows, "mAP", "min", AXES)["id"] == "coco-iou"
    # seeds: the best grid point by mean (c), then its best seed
    assert choose_best(seeded_rows(), "mAP", "max", AXES)["id"] == "c-seed2"
    stopped = [{**rows[2], "status": "stopped", "val_mAP": 0.9}, rows[1]]
    assert choose_best(stopped, "mAP", "max", AXES)["id"] == "ssl-iou"  # completed first
    assert choose_best([rows[3]], "mAP", "max", AXES) is None
    # chosen on validation, never on test: the best test mAP loses to the best validation mAP
    a = row("a", "none", "iou", mAP=0.9, val={"mAP": 0.1})
    b = row("b", "ssl", "iou", mAP=0.2, val={"mAP": 0.3})
    assert choose_best([a, b], "mAP", "max", AXES)["id"] == "b"


def test_best_config_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "size": "tiny",
            "pretrain": "ssl",
            "reg_loss": "ciou",
            "lr": 0.02,
            "seed": 2,
            "pretrain_artifact": str(tmp_path / "a.pt"),
        }
    )
    (tmp_path / "a.json").write_text('{"settings": {"method": "ssl", "pretrain_epochs": 30}}')
    best = row("ssl-ciou-tiny", "ssl", "ciou", mAP=0.383, val={"mAP": 0.401})
    best.update(best_epoch=280, test_mAP_lo=0.35, test_mAP_hi=0.41)
    path = export_best(
        best,
        cfg.to_dict(),
        tmp_path / "best_config.yaml",
        metric="mAP",
        study="s1",
        point_rows=[best, {**best, "test_mAP": 0.381}],
    )
    assert load_config(path) == cfg
    text = path.read_text()
    assert text.startswith(
        "# Best trial of study s1 (chosen on validation mAP): ssl-ciou-tiny (done), val mAP "
        "0.4010 with the checkpoint of epoch 280"
    )
    assert "# test: mAP 0.3830, AP50 0.5000" in text
    assert "# test mAP 95% interval over the test images: [0.3500, 0.4100]" in text
    assert f"python -m study.cli.train --config {path.resolve()}" in text
    assert "reproduces these numbers exactly" not in text  # no threads known: no promise
    assert "over 2 seeds: test mAP 0.3820" in text
    assert f"ssl backbone {tmp_path / 'a.pt'}" in text and "#   pretrain_epochs: 30" in text


def test_plots_are_written(tmp_path: Path) -> None:
    rows = [{**r, "size": s} for r in seeded_rows() for s in ("s",)]
    rows += [{**r, "size": "nano", "id": r["id"] + "n"} for r in seeded_rows()]
    out = plot_by_axis(rows, [*AXES, "size"], "test_mAP", tmp_path / "by_size.png")
    assert out is not None and out.stat().st_size > 1000
    hist = {"a": [{"epoch": 1, "mAP": 0.1}, {"epoch": 2, "mAP": 0.2}], "b": []}
    curves = plot_learning_curves(hist, "mAP", tmp_path / "curves.png")
    assert curves is not None and curves.stat().st_size > 1000
    assert plot_by_axis([], AXES, "test_mAP", tmp_path / "none.png") is None


def test_plots_run_along_the_size_only_where_it_varies() -> None:
    from study.outputs.plots import plot_x_axis

    rows = [{**r, "size": "nano"} for r in seeded_rows()]
    assert plot_x_axis(rows, ["size", *AXES]) == "pretrain"  # pinned to nano: not the x axis
    rows.append({**rows[0], "size": "s"})
    assert plot_x_axis(rows, [*AXES, "size"]) == "size"
    assert plot_x_axis(rows[:1], AXES) == "pretrain"  # nothing varies: the first axis


def test_the_report_shows_the_assignment_diagnostics_of_each_point() -> None:
    from model.assign.diagnostics import ASSIGN_DIAGNOSTICS
    from study.outputs.report import ASSIGN_HEADERS, assignment_section

    assert list(ASSIGN_HEADERS) == list(ASSIGN_DIAGNOSTICS)  # one column per diagnostic
    diag = dict.fromkeys(ASSIGN_DIAGNOSTICS, 1.0)
    rows = [
        {**row("a", "none", "iou"), **diag, "pos_per_obj_lt16": 0.5},
        {**row("b", "none", "iou"), **diag, "pos_per_obj_lt16": 1.5},  # a second seed
        row("c", "ssl", "ciou"),  # ran before the diagnostics existed
    ]
    lines = assignment_section(rows, AXES)
    assert lines[0].startswith("| pretrain | reg_loss | positives / object < 16 px |")
    # mean of 0.5 and 1.5 with its t interval over 2 seeds: 1 ± 12.706 · 0.7071 / √2 = ±6.35
    assert lines[2] == (
        "| none | iou | 1.00 [-5.35, 7.35] | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 2 |"
    )
    assert not any(line.startswith("| ssl") for line in lines)
    assert assignment_section([row("c", "ssl", "ciou")], AXES) == []
