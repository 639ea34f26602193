"""``--seeds auto``'s rule (study/space/racing.py) on hand-made results rows, without Ray; the study
end to end with a fake trainable whose arm effects are known is in test_study_race.py."""

from __future__ import annotations

import math

import pytest

from study.layout import StudyError
from study.space.racing import Race, affordable_trials, next_round, parse_budget, parse_seeds

AXES = ["reg_loss"]
BASE = {"reg_loss": "iou"}


def rows(values: dict[str, list[float]]) -> list[dict]:
    """reg_loss value -> val_mAP of seeds 0, 1, …"""
    return [
        {"id": f"{arm}-seed{s}", "status": "done", "reg_loss": arm, "seed": s, "val_mAP": v}
        for arm, vs in values.items() for s, v in enumerate(vs)
    ]


def by_name(r) -> dict:
    return {s.name: s for s in r.statuses}


def test_adds_seeds_only_where_a_difference_could_be_decided() -> None:
    """ciou − iou per seed: 0.10, 0.11 (mean 0.105, sd 0.00707): t = 21 with 1 df, p =
    2·atan(1/21)/π = 0.0303, Holm over 2 comparisons: 0.061 — not decided with two seeds; at
    Holm's level for the 2 undecided (0.025) three pairs would separate it: t(0.9875, 2)·0.00707
    /√3 = 6.205·0.00408 = 0.0253 < 0.105. giou − iou: +0.01, −0.01, mean 0: nothing to
    separate, ever. So the round adds seed 2 to iou and ciou, and nothing to giou."""
    r = next_round(
        rows({"iou": [0.30, 0.31], "ciou": [0.40, 0.42], "giou": [0.31, 0.30]}),
        AXES, BASE, "mAP", affordable=10,
    )
    st = by_name(r)
    assert st["reg_loss ciou vs iou"].holm_p == pytest.approx(
        2 * 2 * math.atan(1 / 21) / math.pi, rel=1e-6
    )
    assert st["reg_loss ciou vs iou"].state == "adding seeds"
    assert st["reg_loss ciou vs iou"].target == 3
    assert st["reg_loss giou vs iou"].state == "not separable at this budget"
    assert st["reg_loss giou vs iou"].why == "no difference seen"
    assert r.add == {("iou",): [2], ("ciou",): [2]} and r.trials == 2


def test_a_decided_comparison_gets_no_more_seeds() -> None:
    """Three seeds, ciou − iou = 0.10, 0.11, 0.12: t = 0.11 / (0.01/√3) = 19.05, 2 df,
    p = 1 − t/√(2 + t²) = 0.00274; Holm (×2) 0.0055 < 0.05: decided."""
    r = next_round(
        rows({"iou": [0.30, 0.31, 0.32], "ciou": [0.40, 0.42, 0.44],
              "giou": [0.31, 0.30, 0.32]}),
        AXES, BASE, "mAP", affordable=10,
    )
    t = 0.11 / (0.01 / math.sqrt(3))
    ciou = by_name(r)["reg_loss ciou vs iou"]
    assert ciou.state == "decided"
    assert ciou.holm_p == pytest.approx(2 * (1 - t / math.sqrt(2 + t * t)), rel=1e-6)
    assert ("ciou",) not in r.add


def test_the_budget_decides_what_can_still_be_separated() -> None:
    noisy = {"iou": [0.30, 0.31], "ciou": [0.40, 0.42], "giou": [0.31, 0.30]}
    # two trials are needed (seed 2 of iou and of ciou); one is affordable
    r = next_round(rows(noisy), AXES, BASE, "mAP", affordable=1)
    ciou = by_name(r)["reg_loss ciou vs iou"]
    assert ciou.state == "not separable at this budget" and r.add == {}
    assert ciou.why == (
        "about 3 seeds per arm would separate it; the budget pays for 1 more trial(s)"
    )
    # a wide spread: separating it would take more seeds than any budget gives (max_seeds)
    wide = {"iou": [0.30, 0.31], "ciou": [0.30, 0.36], "giou": [0.31, 0.30]}
    r = next_round(rows(wide), AXES, BASE, "mAP", affordable=100, max_seeds=5)
    st = by_name(r)["reg_loss ciou vs iou"]
    assert st.state == "not separable at this budget" and "more than 5 seeds" in st.why


def test_arms_shared_by_two_comparisons_are_paid_once() -> None:
    """iou is the reference of both comparisons: funding both adds seed 2 to iou once."""
    r = next_round(
        rows({"iou": [0.30, 0.31], "ciou": [0.40, 0.42], "diou": [0.40, 0.42]}),
        AXES, BASE, "mAP", affordable=3,
    )
    assert r.add == {("iou",): [2], ("ciou",): [2], ("diou",): [2]}


def test_validation_decides_never_test() -> None:
    """The rule reads val_<metric>; test numbers that would decide change nothing."""
    rs = rows({"iou": [0.30, 0.31], "ciou": [0.40, 0.42], "giou": [0.31, 0.30]})
    for r in rs:
        r["test_mAP"] = 0.9 if r["reg_loss"] == "ciou" else 0.1
    assert next_round(rs, AXES, BASE, "mAP", affordable=10).add == {
        ("iou",): [2], ("ciou",): [2]
    }


def test_budgets_in_trials_or_time() -> None:
    assert parse_budget("16") == (16, None) and parse_budget(16) == (16, None)
    assert parse_budget("25m") == (None, 1500.0) and parse_budget("1.5h") == (None, 5400.0)
    assert parse_budget("90s") == (None, 90.0)
    for bad in ("0", "1.5", "soon", "-3m"):
        with pytest.raises(StudyError, match="--budget"):
            parse_budget(bad)
    assert parse_seeds("auto") == "auto" and parse_seeds("3") == 3 and parse_seeds(2) == 2
    with pytest.raises(StudyError, match="'auto'"):
        parse_seeds("many")
    # 10 trials budget, 8 run: 2 left; 25 minutes, 15 gone, 4-minute waves of 2 trials: 4 left
    assert affordable_trials(Race(budget_trials=10), 8, 0.0, None, 2) == 2
    assert affordable_trials(Race(budget_s=1500.0), 8, 900.0, 240.0, 2) == 4
    assert affordable_trials(Race(budget_s=1500.0), 8, 1400.0, 240.0, 2) == 0
