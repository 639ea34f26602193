"""A study's pretraining jobs (study/artifacts/jobs.py): the skip rule, skips and artifacts applied
to a plan, plan.json read with pretraining.json (and without it, as written before), and the
artifact line."""

from __future__ import annotations

import json
from pathlib import Path

from study.artifacts.jobs import _learned, applied, job_skip, load_study_plan, with_skips
from study.layout import PRETRAINING
from study.space.definition import load_space
from study.space.plan import Plan, PretrainJob, build_plan

SPACE = """
fixed: {epochs: 2, no_aug_epochs: 1, warmup_epochs: 1}
grid: {pretrain: [none, center_loss], reg_loss: [iou, ciou]}
baseline: {pretrain: none, reg_loss: iou}
"""


def _plan(tmp_path: Path) -> Plan:
    space = tmp_path / "p.yaml"
    space.write_text(SPACE)
    plan = build_plan(load_space(space), data=str(tmp_path))
    ids = [t.id for t in plan.trials if t.config.pretrain == "center_loss"]
    cfg = plan.trial(ids[0]).config
    plan.pretrain_jobs = [PretrainJob("k1", cfg, ids)]
    return plan


def test_the_skip_rule() -> None:
    assert job_skip([]) == ""
    assert job_skip(["", "offline"]) == ""  # one trial still runs: so does its job
    assert job_skip(["offline b", "offline a"]) == "offline a"


def test_skipping_every_trial_of_a_job_skips_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    one = with_skips(plan, {"center_loss-iou": "offline"})
    assert one.trial("center_loss-iou").skip == "offline" and not one.pretrain_jobs[0].skip
    both = with_skips(one, {"center_loss-ciou": "offline"})
    assert both.pretrain_jobs[0].skip == "offline"
    assert not plan.trial("center_loss-iou").skip  # the plan given is left as it was


def test_artifacts_and_failures_reach_the_trials(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    done = applied(plan, {"k1": {"path": "/cache/a.pt"}})
    assert done.pretrain_jobs[0].path == "/cache/a.pt"
    assert {t.config.pretrain_artifact for t in done.trials if t.id.startswith("center")} == {
        "/cache/a.pt"
    }
    failed = applied(plan, {"k1": {"skip": "pretraining failed: boom"}})
    skips = {t.id: t.skip for t in failed.trials}
    assert skips["center_loss-iou"] == skips["center_loss-ciou"] == "pretraining failed: boom"
    assert skips["none-iou"] == ""


def test_a_study_folder_reads_with_and_without_pretraining_json(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    study = tmp_path / "s"
    study.mkdir()
    plan.save(study / "plan.json")
    assert load_study_plan(study).pretrain_jobs[0].path == ""
    (study / PRETRAINING).write_text(json.dumps({"k1": {"path": "/cache/a.pt"}}))
    back = load_study_plan(study)
    assert back.trial("center_loss-ciou").config.pretrain_artifact == "/cache/a.pt"
    # a plan.json written before pretraining.json existed: the path is in its job
    (study / PRETRAINING).unlink()
    old = json.loads((study / "plan.json").read_text())
    old["pretrain_jobs"][0]["path"] = "/cache/old.pt"
    (study / "plan.json").write_text(json.dumps(old))
    assert load_study_plan(study).trial("center_loss-iou").config.pretrain_artifact == (
        "/cache/old.pt"
    )


def test_the_artifact_line_says_what_the_pretraining_learned(tmp_path: Path) -> None:
    art = tmp_path / "center_loss-nano-x.pt"
    assert _learned(str(art)) == ""  # no sidecar: nothing claimed
    art.with_suffix(".json").write_text('{"metrics": {"accuracy": 0.9615, "loss": 0.1}}')
    assert _learned(str(art)) == " (held-out bottle/background accuracy 0.962)"
    art.with_suffix(".json").write_text('{"metrics": {"triplet_accuracy": 0.5}}')
    assert _learned(str(art)) == " (held-out triplet accuracy 0.500)"
