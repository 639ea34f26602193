"""The end of a study (also after an interruption, from what exists): ``results.csv``,
``report.md`` (with what the data check dropped and every crash and retry), the plots and
``best_config.yaml`` (:func:`write_all`), then the one-line summary and the exit code
(:func:`finish`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import describe_inference
from model.data.raw import plural
from study.files import atomic_write_text, format_duration
from study.layout import (
    BEST_CONFIG,
    CRASH_LOG,
    CRASHES,
    DATA_REPORT_JSON,
    DATA_REPORT_TXT,
    DONE,
    FAILED,
    LEARNING_CURVES,
    LOG,
    REPORT,
    RESULTS,
    SPLIT,
    TEST_EVAL,
    TRIAL,
    TRIALS,
    TUNE,
    trial_dir,
    valid_metric,
)
from study.outputs.export import choose_best, export_best
from study.outputs.optuna_best import OptunaBest, best_of_sampled, history_lines
from study.outputs.plots import plot_by_axis, plot_learning_curves, plot_vs_params, plot_x_axis
from study.outputs.report import (
    Grid,
    ReportInput,
    assignment_section,
    findings,
    quoted_split,
    render_report,
    table,
)
from study.outputs.results import histories, write_results
from study.space.plan import Plan, describe_profile
from study.space.racing import race_section

# measured (docs/measurements.md, README): two seeds of the same short run on the embedded data
# end 0.02-0.20 AP50 apart, 0.1 on average (nano letterbox 36 epochs: 0.764 / 0.647; the
# assignment quick study, 5 assigners x seeds 0 and 1: 0.02, 0.05, 0.09, 0.11, 0.20)
QUICK_SEED_SPREAD = (
    " (on the embedded data two seeds of one short run differ by 0.1 AP50 on average and up to "
    "0.2: smaller differences here are not findings)"
)
SHOWN_PROBLEMS = 5  # files named per dataset in report.md (all of them: data_report.txt)


def _ran_on(study_dir: Path, trial_id: str) -> str | None:
    """The device the training function says it used (its returned summary)."""
    done = trial_dir(study_dir, trial_id) / DONE
    if not done.is_file():
        return None
    return json.loads(done.read_text()).get("summary", {}).get("device")


def report_axes(plan: Plan) -> list[str]:
    """Row labels of the report: the grid axes that vary (an axis pinned by --set does not)."""
    return [a for a in plan.grid_axes if a not in plan.pinned]


def data_section(study_dir: Path) -> list[str]:
    """What the study's data check kept, dropped and clipped, and why (data_report.json)."""
    path = study_dir / DATA_REPORT_JSON
    if not path.is_file():
        return []
    sources = json.loads(path.read_text()).get("sources", [])
    lines = []
    for src in sources:
        c, rep = src["counts"], src["report"]
        who = "all trials" if len(sources) == 1 else ", ".join(src["trials"])
        lines.append(
            f"- {rep['root']} ({rep['layout']}; {who}): kept "
            f"{plural(c['data_images'], 'image')} with {plural(c['data_boxes'], 'box')}; "
            f"dropped {plural(c['data_images_dropped'], 'image')} and "
            f"{plural(c['data_boxes_dropped'], 'box')}, clipped "
            f"{plural(c['data_boxes_clipped'], 'box')}"
        )
        if c["data_problems"]:
            lines.append(f"  - why: {c['data_problems']}")
        for issue in rep["issues"][:SHOWN_PROBLEMS]:
            where = issue["image"] or issue["source"]
            lines.append(f"  - `{where}` ({issue['action']}): {issue['reason']}")
        if len(rep["issues"]) > SHOWN_PROBLEMS:
            lines.append(f"  - … and {len(rep['issues']) - SHOWN_PROBLEMS} more")
    lines += ["", f"Every file and box concerned: [{DATA_REPORT_TXT}]({DATA_REPORT_TXT})."]
    return lines


def crash_section(rows: list[dict[str, Any]], study_dir: Path) -> list[str]:
    """Every crash (retried or not), failure (never retried) and restart, per trial."""
    body = []
    for r in rows:
        tdir = trial_dir(study_dir, r["id"])
        events = []
        if (tdir / CRASHES).is_file():
            for line in (tdir / CRASHES).read_text().splitlines():
                c = json.loads(line)
                then = "retried from its last checkpoint" if c["retried"] else "not retried"
                events.append(f"crash {c['failure']}: {c['cause']} ({then})")
        if (tdir / FAILED).is_file():
            failed = json.loads((tdir / FAILED).read_text())
            events.append(f"failed, not retried (deterministic): {failed['error']}")
        restarts = int(r.get("attempts") or 0) - 1
        crashes = sum(1 for e in events if e.startswith("crash") and "retried from" in e)
        if restarts > crashes:
            events.append(f"{restarts - crashes} restart(s) after the study was interrupted")
        if events:
            logs = [name for name in (CRASH_LOG, LOG) if (tdir / name).is_file()]
            log = ", ".join(f"[{name}]({TRIALS}/{r['id']}/{name})" for name in logs) or "–"
            body.append([r["id"], str(r.get("attempts") or 0), "; ".join(events), log])
    if not body:
        return []
    return table(["id", "attempts", "what happened", "traceback"], body)


def per_image_loader(study_dir: Path) -> Callable[[str], Any]:
    """trial id -> its test split's per-image evaluation (trials/<id>/test_eval.npz), or None."""

    def load(tid: str) -> Any:
        path = trial_dir(study_dir, tid) / TEST_EVAL
        if not path.is_file():
            return None
        from model.bootstrap import load_per_image_eval

        return load_per_image_eval(path)

    return load


def split_note(study_dir: Path, split: str) -> str:
    """Which split chose and which split is quoted, and where the hold-out is listed."""
    held = f" ({SPLIT} lists the validation images)" if (study_dir / SPLIT).is_file() else ""
    if split == "test":
        return (
            "splits: every choice (best.pt, ASHA, the search, the best trial) on the validation "
            f"split{held}; the tables quote the test split, scored once per trial"
        )
    return (
        "splits: no test split in the data, so the tables quote the validation split, on which "
        f"the checkpoints and the best trial were also chosen{held}: optimistic for the best"
    )


def findings_of(rows: list[dict[str, Any]], plan: Plan, study_dir: Path) -> list[Any]:
    """The report's findings (grid studies; [] for a sampled one)."""
    if plan.space.sampled:
        return []
    inp = ReportInput(
        title="", rows=rows, axes=report_axes(plan), baseline=plan.baseline,
        metric=plan.space.metric, mode=plan.space.mode, per_image=per_image_loader(study_dir),
    )
    g = Grid.of(inp)
    return findings(g) if g.points else []


def write_all(
    plan: Plan, study_dir: Path, wall_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Path]]:
    """results.csv, best_config.yaml, the plots and report.md, from the trial files alone."""
    sp = plan.space
    rows = write_results(plan, study_dir)
    written: dict[str, Path] = {"results": study_dir / RESULTS}
    axes = report_axes(plan)
    best, by_optuna = choose(plan, study_dir, rows)
    split = quoted_split(rows)
    best_line = ""
    if best is not None:
        written["best_config"], best_line = _export(plan, study_dir, rows, best, split)
        best_line += _optuna_note(by_optuna, plan.seeds)
    report = render_report(
        ReportInput(
            title=f"Study {study_dir.name} ({sp.name})",
            rows=rows,
            axes=axes,
            baseline=plan.baseline,
            stand_in_for=plan.stand_in_for,
            metric=sp.metric,
            mode=sp.mode,
            sampled_keys=_sampled_keys(plan),
            description=sp.description,
            notes=_notes(plan, study_dir, rows, split, wall_s),
            plots=_plots(plan, study_dir, rows, split),
            best_line=best_line,
            per_image=per_image_loader(study_dir),
            sections=[
                (title, lines)
                for title, lines in (
                    ("Seeds", race_section(study_dir)),
                    ("Label assignment", assignment_section(rows, axes)),
                    ("Data", data_section(study_dir)),
                    ("Crashes and retries", crash_section(rows, study_dir)),
                )
                if lines
            ],
        )
    )
    written["report"] = atomic_write_text(study_dir / REPORT, report)
    return rows, best, written


def choose(
    plan: Plan, study_dir: Path, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, OptunaBest | None]:
    """The study's best trial, on validation: a grid study's by choose_best (best grid point by
    the mean over its seeds, then its best seed); a sampled study's is Optuna's best trial (its
    best seed), the one ``optuna-dashboard`` shows (study/outputs/optuna_best.py)."""
    sp = plan.space
    if not sp.sampled:
        return choose_best(rows, sp.metric, sp.mode, report_axes(plan)), None
    keys = _sampled_keys(plan) if plan.seeds > 1 else []
    return best_of_sampled(rows, sp.metric, sp.mode, keys, study_dir)


def _optuna_note(found: OptunaBest | None, seeds: int) -> str:
    if found is None:
        return ""
    of = " (the mean over those of its seeds that finished; this is the best)" if seeds > 1 else ""
    return f" It is Optuna's best trial, number {found.number}, value {found.value:.4f}{of}."


def _sampled_keys(plan: Plan) -> list[str]:
    return [k for k in plan.space.sample if k not in plan.pinned]


def _export(
    plan: Plan, study_dir: Path, rows: list[dict[str, Any]], best: dict[str, Any], split: str
) -> tuple[Path, str]:
    """best_config.yaml of the best trial (chosen on validation), and the report's line on it."""
    sp = plan.space
    axes = report_axes(plan)  # its grid point; a sampled trial's: its proposal (its seeds)
    if sp.sampled:
        axes = _sampled_keys(plan) if plan.seeds > 1 else ["id"]
    info = json.loads((trial_dir(study_dir, best["id"]) / TRIAL).read_text())
    point_rows = [r for r in rows if all(r.get(a) == best.get(a) for a in axes)]
    # its Tune experiment: tune/, or tune-rK/ for a round of --seeds auto
    ckpts = sorted(study_dir.glob(f"{TUNE}*/{best['id']}/checkpoint_*/last.pt"))
    path = export_best(
        best,
        info["config"],
        study_dir / BEST_CONFIG,
        metric=sp.metric,
        study=study_dir.name,
        point_rows=point_rows,
        weights=ckpts[-1].resolve() if ckpts else None,  # absolute: read from anywhere
        threads=info.get("torch_threads"),
        device=_ran_on(study_dir, best["id"]),
    )
    quoted = f"{split}_{sp.metric}"
    shown = (
        f"; test {sp.metric} {best[quoted]:.4f}"
        if split == "test" and valid_metric(best.get(quoted)) else ""
    )
    line = (
        f"**Best trial (chosen on validation {sp.metric}): {best['id']}** — val {sp.metric} "
        f"{best[f'val_{sp.metric}']:.4f}{shown}; its full config is `{path.name}`, whose "
        "header gives the exact rerun command."
    )
    return path, line


def _plots(
    plan: Plan, study_dir: Path, rows: list[dict[str, Any]], split: str
) -> list[tuple[str, str]]:
    """(caption, file name) of each plot written: the quoted metric by an axis, validation
    per epoch, and for a sampled study the metric against the sampled values."""
    sp, axes = plan.space, report_axes(plan)
    quoted = f"{split}_{sp.metric}"
    plots: list[tuple[str, str]] = []
    x_axis = plot_x_axis(rows, axes) if axes else "size"
    by_axis = plot_by_axis(rows, axes, quoted, study_dir / f"{quoted}_by_{x_axis}.png")
    if by_axis is not None:
        plots.append((f"{split} {sp.metric} by {x_axis}", by_axis.name))
    curves = plot_learning_curves(
        histories(rows, study_dir), f"val_{sp.metric}", study_dir / LEARNING_CURVES
    )
    if curves is not None:
        plots.append((f"validation {sp.metric} per epoch", curves.name))
    if sp.sampled:
        out = study_dir / f"{quoted}_vs_params.png"
        vs = plot_vs_params(rows, _sampled_keys(plan), quoted, out)
        if vs is not None:
            plots.append((f"{split} {sp.metric} against the sampled values", vs.name))
    return plots


def _notes(
    plan: Plan, study_dir: Path, rows: list[dict[str, Any]], split: str, wall_s: float
) -> list[str]:
    """The report's opening notes: profile, space, time, scoring, splits, seeds, baseline."""
    sp, axes = plan.space, report_axes(plan)
    trial_s = sum(float(r.get("train_time_s") or 0.0) for r in rows)
    inputs = (
        "input_mode varies by trial (column input_mode); " if "input_mode" in axes
        else f"input {describe_inference(plan.base).split(';')[0]}; "
    )
    notes = [
        describe_profile(plan),
        *plan.notes,
        f"space {sp.path} ({'sampled: Optuna TPE' if sp.sampled else 'grid'}"
        f"{', ASHA' if sp.scheduler.kind == 'asha' else ''}); metric {sp.metric} ({sp.mode})",
        f"wall time of this run {wall_s / 60:.1f} min; training time summed over trials "
        f"{trial_s / 60:.1f} min",
        "scoring: COCO on the full evaluation frames and their original boxes; " + inputs
        + ("predicted boxes clipped to the image" if plan.base.eval_clip_boxes
           else "predicted boxes unclipped, as the official evaluator"),
        split_note(study_dir, split),
    ]
    if plan.race is not None:
        notes.append(plan.race.describe())
    elif plan.seeds > 1:
        what = "sampled configuration" if sp.sampled else "grid point"
        notes.append(f"every {what} repeated with seeds 0..{plan.seeds - 1}, paired by seed")
    elif not sp.sampled:
        notes.append(
            "one seed per grid point: training noise is not measured, so no comparison can be "
            "decided; `--seeds 3` (or `--seeds auto`) repeats the grid and says which "
            "differences hold" + (QUICK_SEED_SPREAD if plan.quick else "")
        )
    if sp.sampled:
        notes += history_lines(study_dir)
    if plan.baseline and not plan.stand_in_for:  # (a stand-in is in plan.notes already)
        notes.append("baseline: " + ", ".join(f"{k}={v}" for k, v in plan.baseline.items()))
    return notes


@dataclass
class StudyOutcome:
    study_dir: Path
    rows: list[dict[str, Any]]
    summary: str
    exit_code: int  # 0 all finished, 1 some trial failed, 130 interrupted
    best: dict[str, Any] | None = None
    wall_s: float = 0.0


def finish(
    plan: Plan, study_dir: Path, wall_s: float, log: Callable[[str], None] = print
) -> StudyOutcome:
    """Write results.csv, report.md, plots and best_config.yaml; print the one-line summary."""
    rows, best, written = write_all(plan, study_dir, wall_s)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    state = ", ".join(f"{n} {s}" for s, n in counts.items())
    unfinished = counts.get("pending", 0) + counts.get("unfinished", 0)
    code = 130 if unfinished else (1 if counts.get("error") else 0)
    metric = plan.space.metric
    split = quoted_split(rows)
    best_txt = (
        f"best on val {best['id']} (val {metric} {best['val_' + metric]:.4f}"
        + (f", test {best['test_' + metric]:.4f})"
           if valid_metric(best.get(f"test_{metric}")) else ")")
        if best
        else f"no finished trial ({metric})"
    )
    if plan.race is not None or plan.seeds > 1:
        found = findings_of(rows, plan, study_dir)
        decided = [f for f in found if f.decided]
        if found:
            best_txt += (
                f"; {len(decided)} of {len(found)} comparisons decided on {split} {metric}"
            )
    summary = (
        f"study {study_dir.name}: {state} in {format_duration(wall_s)}; {best_txt} — "
        f"report {written['report']}, results {written['results']}"
        + (f", best config {written['best_config']}" if "best_config" in written else "")
    )
    if plan.space.sampled:
        summary += "; " + history_lines(study_dir)[0].replace("`", "")
    if unfinished:
        summary += f"; interrupted: continue with python study/run.py --resume --out {study_dir}"
    log(summary)
    return StudyOutcome(study_dir, rows, summary, code, best, wall_s)
