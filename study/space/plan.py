"""The study plan: every trial's full config, the pretraining jobs, and what is skipped and why.

The plan is computed once from the space and the command line, printed by ``--dry-run`` and
saved as ``plan.json`` in the study directory, so that ``--resume`` reruns exactly the same study
even if the space file changed since. Ray-free.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import ConfigError, TrialConfig, config_from_dict
from study.files import atomic_write_json
from study.space.definition import Resources, Space, parse_space
from study.space.racing import BUDGET_PER_ARM, Race, parse_budget

PATH_KEYS = ("data", "coco_weights", "pretrain_artifact", "ssl_sources")  # made absolute: trials
# run with the working directory set to their Ray trial folder, where relative paths would break.


@dataclass
class PlannedTrial:
    id: str
    point: dict[str, Any]  # the grid values (and seed when repeated) that make this trial
    config: TrialConfig
    skip: str = ""  # why it will not run ("" = it runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "point": self.point,
            "skip": self.skip,
            "config": self.config.to_dict(),
        }


@dataclass
class PretrainJob:
    key: str  # the artifact cache key (dedupes trials that share an artifact)
    config: TrialConfig  # any trial's config with this key; only pretraining settings matter
    trials: list[str]
    path: str = ""  # filled in when computed
    skip: str = ""

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "key": self.key,
            "method": c.pretrain,
            "size": c.size,
            "init": c.pretrain_init,
            "seed": c.seed,
            "trials": self.trials,
            "path": self.path,
            "skip": self.skip,
        }


@dataclass
class Plan:
    space: Space
    quick: bool  # True = no --data: the embedded dataset and the space's quick profile
    base: TrialConfig  # fixed + quick + --data + --set, before the axes
    overrides: dict[str, Any]
    seeds: int
    trials: list[PlannedTrial] = field(default_factory=list)  # grid studies (sampled: empty)
    pretrain_jobs: list[PretrainJob] = field(default_factory=list)
    pinned: dict[str, Any] = field(default_factory=dict)  # axes fixed by --set
    notes: list[str] = field(default_factory=list)  # said once in the output and the report
    full: bool = False  # --full: the quick profile over every grid value (Space.grid_for)
    cuda: bool = False  # the quick profile's CUDA variant (quick.cuda)
    race: Race | None = None  # --seeds auto (space/racing.py); seeds is then its first round's

    @property
    def seeded(self) -> bool:
        """Whether trial ids and configs carry a seed (repeated seeds, or --seeds auto)."""
        return self.seeds > 1 or self.race is not None

    def planned_trial(self, point: dict[str, Any], seed: int | None = None) -> PlannedTrial:
        """The trial of a grid ``point`` (axis -> value) and ``seed`` (None: the base's)."""
        values = dict(point)
        full = dict(point)
        if seed is not None:
            full["seed"] = seed
            values["seed"] = seed
        tid = trial_id(full)
        cfg = config_from_dict(values, source=f"{self.space.path}: trial {tid}", base=self.base)
        return PlannedTrial(tid, full, cfg)

    @property
    def grid(self) -> dict[str, list[Any]]:
        return self.space.grid_for(self.quick, self.full)

    @property
    def baseline(self) -> dict[str, Any]:
        """The grid point every difference is measured against (the quick profile's stand-in
        without --data, where the space has one)."""
        return self.space.baseline_for(self.quick)

    @property
    def stand_in_for(self) -> dict[str, Any]:
        """The space's baseline values that :attr:`baseline` replaces ({} when it is the
        space's own)."""
        return {k: v for k, v in self.space.baseline.items() if self.baseline.get(k) != v}

    @property
    def resources(self) -> Resources:
        if self.quick and self.cuda and self.space.quick_cuda_resources is not None:
            return self.space.quick_cuda_resources
        if self.quick and self.space.quick_resources is not None:
            return self.space.quick_resources
        return self.space.resources

    @property
    def num_samples(self) -> int:
        if self.quick and self.space.quick_num_samples is not None:
            return self.space.quick_num_samples
        return self.space.num_samples

    @property
    def grid_axes(self) -> list[str]:
        return list(self.grid)

    def runnable(self) -> list[PlannedTrial]:
        return [t for t in self.trials if not t.skip]

    def trial(self, trial_id: str) -> PlannedTrial:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise KeyError(trial_id)

    def baseline_ids(self) -> list[str]:
        """Trials at the baseline grid point (one per seed)."""
        b = self.baseline
        if not b:
            return []
        # by config value, not grid point: an axis pinned by --set keeps its baseline
        return [t.id for t in self.trials if all(getattr(t.config, k) == v for k, v in b.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "space": {
                "name": self.space.name,
                "path": str(self.space.path),
                "text": self.space.text,
            },
            "quick": self.quick,
            "full": self.full,
            "cuda": self.cuda,
            "overrides": self.overrides,
            "seeds": self.seeds,
            "pinned": self.pinned,
            "race": self.race.to_dict() if self.race is not None else None,
            "notes": self.notes,
            "base": self.base.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
            "pretrain_jobs": [
                j.to_dict() | {"config": j.config.to_dict()} for j in self.pretrain_jobs
            ],
        }

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())


def load_plan(path: Path) -> Plan:
    """Read ``plan.json`` back (the space from its saved text: an edited file changes nothing)."""
    d = json.loads(path.read_text())
    sp = d["space"]
    space = parse_space(
        sp["text"],
        source=f"{path} (saved space {sp['path']})",
        name=sp["name"],
        path=Path(sp["path"]),
    )
    src = str(path)
    plan = Plan(
        space=space,
        quick=d["quick"],
        base=config_from_dict(d["base"], src),
        overrides=d["overrides"],
        seeds=d["seeds"],
        pinned=d["pinned"],
        notes=d["notes"],
        full=d.get("full", False),  # (plans written before --full and quick.cuda: neither)
        cuda=d.get("cuda", False),
        race=Race.from_dict(d["race"]) if d.get("race") else None,
    )
    plan.trials = [trial_from_dict(t, src) for t in d["trials"]]
    plan.pretrain_jobs = [job_from_dict(j, src) for j in d["pretrain_jobs"]]
    return plan


def trial_from_dict(t: dict[str, Any], source: str) -> PlannedTrial:
    """A :class:`PlannedTrial` back from its ``to_dict``."""
    return PlannedTrial(t["id"], t["point"], config_from_dict(t["config"], source), t["skip"])


def job_from_dict(j: dict[str, Any], source: str) -> PretrainJob:
    """A :class:`PretrainJob` back from ``to_dict() | {"config": …}``."""
    return PretrainJob(
        j["key"], config_from_dict(j["config"], source), j["trials"], j["path"], j["skip"]
    )


def _absolute(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key in PATH_KEYS:
        v = out.get(key)
        if isinstance(v, str) and v:
            if key == "ssl_sources":
                out[key] = ":".join(str(Path(p).expanduser().resolve()) for p in v.split(":") if p)
            else:
                out[key] = str(Path(v).expanduser().resolve())
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def trial_id(point: dict[str, Any]) -> str:
    """``coco-iou-s`` (grid values in axis order), ``-seed1`` appended when repeated."""
    parts = [f"seed{v}" if k == "seed" else _fmt(v) for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts)) or "trial"


def build_plan(
    space: Space,
    *,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    seeds: int | str | None = None,
    full: bool = False,
    cuda: bool = False,
    budget: str | int | None = None,
) -> Plan:
    """Expand ``space`` into trials. ``data`` None = quick profile on the embedded dataset (its
    CUDA variant with ``cuda``; every grid value of the space too with ``full``). ``seeds`` None
    = the quick profile's ``seeds`` (else 1); ``"auto"`` = seeds where they decide something
    (study/space/racing.py) within ``budget`` (trials, or a wall time such as "25m").

    Every trial's config is built and validated here, once (``config_from_dict`` over the base
    of fixed + quick + --data + --set); the trial receives the object as it is."""
    overrides = dict(overrides or {})
    quick = data is None
    if full and not quick:
        raise ConfigError("--full widens the quick profile's grid; with --data every grid "
                          "point runs already")
    seeds, race = _seeds(space, quick, seeds, budget, overrides)
    grid = space.grid_for(quick, full)
    pinned = {k: v for k, v in overrides.items() if k in grid or k in space.sample}
    values = _base_values(space, quick, cuda, data, overrides)
    notes = [f"axis {k} pinned to {v!r} by --set" for k, v in pinned.items()]
    if quick:
        notes += _quick_notes(space, grid, pinned, full)
    base = config_from_dict(_absolute(values), source="the study's settings (fixed/quick/--set)")
    plan = Plan(space, quick, base, overrides, seeds, pinned=pinned, notes=notes, full=full,
                cuda=quick and cuda, race=race)
    if plan.stand_in_for:
        ours = ", ".join(f"{k}={v}" for k, v in plan.baseline.items())
        theirs = ", ".join(f"{k}={v}" for k, v in plan.stand_in_for.items())
        coco = plan.stand_in_for.get("pretrain") == "coco"
        why = " (COCO weights are a download)" if coco else " (outside the quick grid)"
        notes.append(f"baseline: {ours}, a stand-in for the study's {theirs}{why}")
    if not space.sampled:  # (a sampled study's trials are proposed by Optuna as it runs)
        plan.trials = _grid_trials(plan, {k: v for k, v in grid.items() if k not in pinned})
    return plan


def _seeds(
    space: Space, quick: bool, seeds: int | str | None, budget: str | int | None,
    overrides: dict[str, Any],
) -> tuple[int, Race | None]:
    """(seeds of the first round, the --seeds auto settings or None), checked."""
    if seeds is None:
        seeds = (space.quick_seeds if quick else None) or 1
    if quick and budget is None and seeds == "auto":
        budget = space.quick_budget  # (None: the default budget)
    race = _race(space, seeds, budget)
    if race is not None:
        seeds = race.initial_seeds
    assert isinstance(seeds, int)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if seeds > 1 and "seed" in overrides:
        raise ConfigError("--seeds N runs seeds 0..N-1; drop --set seed=… or use --seeds 1")
    if seeds > 1 and "seed" in space.grid:
        raise ConfigError(f"{space.path}: 'seed' is a grid axis already; drop --seeds")
    return seeds, race


def _base_values(
    space: Space, quick: bool, cuda: bool, data: str | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """fixed, then the quick profile (and its CUDA block) or --data, then --set."""
    values: dict[str, Any] = dict(space.fixed)
    if quick:
        values.update(space.quick)
        if cuda:
            values.update(space.quick_cuda)
        values["device"] = "cuda" if cuda else "cpu"
        values["data"] = ""
    else:
        values["data"] = data
    values.update(overrides)
    return values


def _quick_notes(
    space: Space, grid: dict[str, list[Any]], pinned: dict[str, Any], full: bool
) -> list[str]:
    """What the quick profile does to the grid's axes, said plainly."""
    notes = []
    for k, v in space.quick_grid.items():
        if k in pinned or grid[k] == space.grid[k]:
            continue
        what = f"pinned to {v[0]}" if len(v) == 1 else f"narrowed to {', '.join(map(str, v))}"
        if full:
            notes.append(f"--full: axis {k} runs {', '.join(map(str, grid[k]))}")
        else:
            notes.append(
                f"quick profile: axis {k} {what} (the study's grid has "
                f"{', '.join(map(str, space.grid[k]))}; --full runs them all)"
            )
    return notes


def _grid_trials(plan: Plan, axes: dict[str, list[Any]]) -> list[PlannedTrial]:
    """Every combination of the axes' values, each seed of the first round."""
    trials: list[PlannedTrial] = []
    seen: set[str] = set()
    for combo in itertools.product(*axes.values()):
        for s in range(plan.seeds):
            point = dict(zip(axes, combo, strict=True))
            t = plan.planned_trial(point, s if plan.seeded else None)
            if t.id in seen:  # two values that print alike (0.1 and 0.10 cannot; "a b" / "a_b")
                t.id = f"{t.id}-{len(trials)}"
            seen.add(t.id)
            trials.append(t)
    return trials


def _race(space: Space, seeds: int | str, budget: str | int | None) -> Race | None:
    """The --seeds auto settings (None for a fixed number of seeds)."""
    if seeds != "auto":
        if budget is not None:
            raise ConfigError("--budget is the budget of --seeds auto; add --seeds auto")
        return None
    if space.sampled:
        raise ConfigError(
            f"{space.path}: --seeds auto races the grid's comparisons; a sampled space has none "
            "(use --seeds N to repeat each sampled configuration)"
        )
    if budget is None:
        arms = 1
        for values in space.grid.values():
            arms *= len(values)
        return Race(budget_trials=BUDGET_PER_ARM * arms)
    trials, seconds = parse_budget(budget)
    return Race(budget_trials=trials, budget_s=seconds)


def describe_profile(plan: Plan) -> str:
    """One line: which data and settings the trials use (the quick profile spelled out)."""
    if not plan.quick:
        return f"data {plan.base.data}: the space's own settings"
    sp = plan.space
    values = sp.quick | (sp.quick_cuda if plan.cuda else {})
    q = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    where = (
        "CUDA (--device cpu for the CPU profile)" if plan.cuda
        else "CPU" + (" (a CUDA device would get quick.cuda)" if sp.quick_cuda else "")
    )
    return (
        f"no --data: the embedded floating-bottle dataset with the quick profile of "
        f"{sp.path.name} for {where} ({q or 'no overrides'}); pass --data PATH for the real study"
    )
