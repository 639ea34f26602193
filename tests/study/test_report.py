"""Report, statistics, results table, best-config export and plots — on hand-made tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from model.config import TrialConfig, config_from_dict, load_config
from model.evaluate import COCO_METRICS
from study.export import choose_best, export_best
from study.plots import plot_by_axis, plot_learning_curves
from study.report import ReportInput, render_report
from study.results import read_csv, read_history, write_csv
from study.stats import summarize, t_quantile, welch
from tests.paths import REPO

AXES = ["pretrain", "reg_loss"]


def row(tid: str, pretrain: str, loss: str, status: str = "done", **metrics: float) -> dict:
    base = {m: 0.5 for m in COCO_METRICS}
    base.update(AP_large=-1.0, AR_large=-1.0)  # COCO: no large objects in the eval set
    base.update(metrics)
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
        **base,
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
    assert base[len(AXES) + len(COCO_METRICS) :] == ["10.0", "50.0", "9.00"]
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


def test_report_with_seeds_mean_std_ci_and_welch() -> None:
    report = render_report(
        ReportInput(
            title="t",
            rows=seeded_rows(),
            axes=AXES,
            baseline={"pretrain": "base", "reg_loss": "iou"},
        )
    )
    lines = report.split("### ")
    main, ci, diff = lines[0], lines[1], lines[2]
    assert table_row(main, "base (baseline)")[col("mAP")] == "0.320 ± 0.020"
    assert table_row(main, "b")[col("mAP")] == "0.360 ± 0.010 (+0.040)"  # interval holds 0
    assert table_row(main, "c")[col("mAP")] == "**0.410** ± 0.010 (+0.090*)"
    # 95% CI of the means: 0.32 ± 4.3027*0.02/sqrt(3) = ±0.0497; 0.36 ± 0.0248
    assert table_row(ci, "base (baseline)")[col("mAP")] == "[0.270, 0.370]"
    assert table_row(ci, "b")[col("mAP")] == "[0.335, 0.385]"
    assert table_row(ci, "b")[-1] == "3"
    # Welch: 0.04 ± 3.2188 * 0.01291 = [-0.0016, 0.0816]; 0.09 ± 0.0416
    assert table_row(diff, "b")[col("mAP")] == "+0.040 [-0.002, +0.082]"
    assert table_row(diff, "c")[col("mAP")] == "+0.090 [+0.048, +0.132]*"
    assert table_row(diff, "c")[col("AP50")] == "+0.000 (no interval)"  # identical runs


# --- results table, best config, plots --------------------------------------------------------


def test_results_csv_round_trip(tmp_path: Path) -> None:
    cfg = TrialConfig(size="tiny", lr=0.02).to_dict()
    rows = [{**r, **cfg} for r in single_seed_rows()]
    rows[0]["mAP"] = float("nan")
    write_csv(rows, tmp_path / "results.csv")
    back = read_csv(tmp_path / "results.csv")
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    assert back[0]["mAP"] is None and back[1]["mAP"] == 0.350 and back[1]["AP_large"] == -1.0
    assert back[1]["lr"] == 0.02 and back[1]["ema"] is True and back[1]["size"] == "tiny"
    assert back[3]["reason"] == "COCO weights for YOLOX-s unavailable"
    assert list(back[0])[:3] == ["id", "status", "reason"]


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
    stopped = [{**rows[2], "status": "stopped", "mAP": 0.9}, rows[1]]
    assert choose_best(stopped, "mAP", "max", AXES)["id"] == "ssl-iou"  # completed first
    assert choose_best([rows[3]], "mAP", "max", AXES) is None


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
    best = row("ssl-ciou-tiny", "ssl", "ciou", mAP=0.383)
    path = export_best(
        best,
        cfg.to_dict(),
        tmp_path / "best_config.yaml",
        metric="mAP",
        study="s1",
        point_rows=[best, {**best, "mAP": 0.381}],
    )
    assert load_config(path) == cfg
    text = path.read_text()
    assert text.startswith("# Best trial of study s1: ssl-ciou-tiny (done), mAP 0.3830")
    train = REPO / "study" / "train.py"
    assert "AP50 0.5000" in text and f"python {train} --config {path.resolve()}" in text
    assert "reproduces these numbers exactly" not in text  # no threads known: no promise
    assert "over 2 seeds: mAP 0.3820" in text
    assert f"ssl backbone {tmp_path / 'a.pt'}" in text and "#   pretrain_epochs: 30" in text


def test_plots_are_written(tmp_path: Path) -> None:
    rows = [{**r, "size": s} for r in seeded_rows() for s in ("s",)]
    rows += [{**r, "size": "nano", "id": r["id"] + "n"} for r in seeded_rows()]
    out = plot_by_axis(rows, [*AXES, "size"], "mAP", tmp_path / "by_size.png")
    assert out is not None and out.stat().st_size > 1000
    hist = {"a": [{"epoch": 1, "mAP": 0.1}, {"epoch": 2, "mAP": 0.2}], "b": []}
    curves = plot_learning_curves(hist, "mAP", tmp_path / "curves.png")
    assert curves is not None and curves.stat().st_size > 1000
    assert plot_by_axis([], AXES, "mAP", tmp_path / "none.png") is None


def test_plots_run_along_the_size_only_where_it_varies() -> None:
    from study.plots import plot_x_axis

    rows = [{**r, "size": "nano"} for r in seeded_rows()]
    assert plot_x_axis(rows, ["size", *AXES]) == "pretrain"  # pinned to nano: not the x axis
    rows.append({**rows[0], "size": "s"})
    assert plot_x_axis(rows, [*AXES, "size"]) == "size"
    assert plot_x_axis(rows[:1], AXES) == "pretrain"  # nothing varies: the first axis


def test_the_report_shows_the_assignment_diagnostics_of_each_point() -> None:
    from model.yolox.loss import ASSIGN_DIAGNOSTICS
    from study.report import ASSIGN_HEADERS, assignment_section

    assert list(ASSIGN_HEADERS) == list(ASSIGN_DIAGNOSTICS)  # one column per diagnostic
    diag = dict.fromkeys(ASSIGN_DIAGNOSTICS, 1.0)
    rows = [
        {**row("a", "none", "iou"), **diag, "pos_per_obj_lt16": 0.5},
        {**row("b", "none", "iou"), **diag, "pos_per_obj_lt16": 1.5},  # a second seed
        row("c", "ssl", "ciou"),  # ran before the diagnostics existed
    ]
    lines = assignment_section(rows, AXES)
    assert lines[0].startswith("| pretrain | reg_loss | positives / object < 16 px |")
    assert lines[2] == "| none | iou | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |"  # mean 0.5, 1.5
    assert not any(line.startswith("| ssl") for line in lines)
    assert assignment_section([row("c", "ssl", "ciou")], AXES) == []
