"""Search spaces: the YAML files under ``search_spaces/`` that define a study.

A space file holds (every key optional except that a study needs something to vary or repeat)::

    description: free text, printed at the top of the report
    metric: mAP            # one of model.coco_eval.COCO_METRICS; default mAP
    mode: max              # max | min; default max
    fixed: {key: value}    # trial-config values shared by every trial
    grid: {key: [v, ...]}  # grid axes: every combination runs
    sample: {key: {type: loguniform|uniform|int|choice, ...}}  # Optuna TPE axes
    num_samples: 16        # sampled trials (only with `sample`)
    scheduler: none | {type: asha, max_t, grace_period, reduction_factor}
    resources: {cpus: 1, gpus: 0}   # per trial; fractional GPUs share a card
    max_failures: 2        # retries of a crashed trial from its last checkpoint
    baseline: {key: value} # the grid point the report compares against (grid axes only)
    quick:                 # the quick profile: used without --data (the embedded dataset)
      key: value           # trial-config overrides
      grid: {key: [v, ...]}   # replaces these grid axes' values (e.g. pin size: [nano]);
                              # --full runs the union with the space's own values
      baseline: {key: value}  # a stand-in baseline point that can run offline
      seeds: N | auto      # default --seeds of the quick profile
      budget: 23m          # with seeds: auto, its default --budget (trials or a wall time)
      resources: {...}     # per trial
      num_samples: N       # sampled trials
      cuda: {key: value, resources: {...}}  # on top, when the study runs on a CUDA device

Every value is checked by the trial config's own checker (``config_from_dict``), so a typo or a
wrong type fails here, naming the file and the key, before anything starts.

Grid and sample axes cannot be mixed: Optuna cannot enumerate a grid (Ray's OptunaSearch rejects
grid_search), and turning grid axes into categorical choices would silently drop grid points. Use a
``choice`` distribution for a categorical sampled axis, or one study per grid value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.coco_eval import COCO_METRICS
from model.config import ConfigError, TrialConfig, as_float_literal, config_from_dict, config_keys
from study.layout import StudyError

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
TOP_KEYS = (
    "description",
    "metric",
    "mode",
    "fixed",
    "grid",
    "sample",
    "num_samples",
    "scheduler",
    "resources",
    "max_failures",
    "baseline",
    "quick",
)
DIST_KEYS = {
    "loguniform": ({"low", "high"}, set()),
    "uniform": ({"low", "high"}, set()),
    "int": ({"low", "high"}, {"step", "log"}),
    "choice": ({"values"}, set()),
}  # type: (required keys, optional keys)
# quick keys that are not trial-config keys
QUICK_STUDY_KEYS = (
    "resources", "num_samples", "grid", "baseline", "seeds", "budget", "cuda"
)


class SpaceError(StudyError, ConfigError):
    """A search-space file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Dist:
    """One sampled axis: ``kind`` in loguniform | uniform | int | choice."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Any, ...] = ()
    step: int = 1
    log: bool = False

    def corners(self) -> list[Any]:
        """The extreme values (what validation checks: every rule is monotone in one key)."""
        if self.kind == "choice":
            return list(self.values)
        return [self.low, self.high]

    def to_optuna(self) -> Any:
        import optuna.distributions as od  # optuna is heavy; only the driver needs it

        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), step=self.step, log=self.log)
        return od.FloatDistribution(
            float(self.low), float(self.high), log=self.kind == "loguniform"
        )

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        d: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int":
            d.update(step=self.step, log=self.log)
        return d


@dataclass(frozen=True)
class Scheduler:
    kind: str = "none"  # none | asha
    max_t: int | None = None  # None = the trials' epochs
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Space:
    name: str
    path: Path
    description: str = ""
    metric: str = "mAP"
    mode: str = "max"
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    sample: dict[str, Dist] = field(default_factory=dict)
    num_samples: int = 1
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_failures: int = 2
    baseline: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)  # trial-config overrides only
    quick_resources: Resources | None = None
    quick_num_samples: int | None = None
    quick_grid: dict[str, list[Any]] = field(default_factory=dict)  # axes the quick run narrows
    quick_baseline: dict[str, Any] = field(default_factory=dict)  # its stand-in baseline values
    quick_seeds: int | str | None = None  # a number of seeds, or "auto" (study/space/racing.py)
    quick_budget: str | None = None  # the budget of quick.seeds: auto (trials or a wall time)
    quick_cuda: dict[str, Any] = field(default_factory=dict)  # trial-config overrides on CUDA
    quick_cuda_resources: Resources | None = None
    text: str = ""  # the file as read, kept in the study directory so a resume uses the same

    @property
    def sampled(self) -> bool:
        return bool(self.sample)

    def grid_for(self, quick: bool, full: bool = False) -> dict[str, list[Any]]:
        """The grid a study runs: the space's; without --data its quick grid, or with ``full``
        every value of both (the quick profile's first)."""
        if not quick:
            return dict(self.grid)
        if not full:
            return self.grid | self.quick_grid
        out = {}
        for key, values in self.grid.items():
            first = self.quick_grid.get(key, [])
            out[key] = list(first) + [v for v in values if v not in first]
        return out

    def baseline_for(self, quick: bool) -> dict[str, Any]:
        return self.baseline | self.quick_baseline if quick and self.baseline else self.baseline


def resolve_space_path(name_or_path: str) -> Path:
    """``ablation`` → ``search_spaces/ablation.yaml``; a path is taken as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        if not p.is_file():
            raise SpaceError(f"search space file {p} does not exist")
        return p
    candidate = SPACES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(q.stem for q in SPACES_DIR.glob("*.yaml")))
        raise SpaceError(f"unknown search space {name_or_path!r}; shipped spaces: {known}")
    return candidate


def shipped_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> Space:
    path = resolve_space_path(str(name_or_path))
    text = path.read_text()
    return parse_space(text, source=str(path), name=path.stem, path=path)


def parse_space(text: str, source: str, name: str, path: Path | None = None) -> Space:
    """The :class:`Space` of a YAML text; every value checked, errors name ``source`` and the
    key."""
    raw = _read_yaml(text, source)
    keys = _Keys(raw, source)
    metric, mode, description = _parse_head(keys)
    fixed = keys.mapping("fixed")
    base = config_from_dict(fixed, source=f"{source}: fixed")
    grid, sample, num_samples = _parse_axes(keys, fixed, base)
    quick = _parse_quick(keys, grid, sample, base)
    baseline = _parse_baselines(keys, grid, quick)
    return Space(
        name=name,
        path=path or Path(source),
        description=description.strip(),
        metric=metric,
        mode=mode,
        fixed=fixed,
        grid=grid,
        sample=sample,
        num_samples=num_samples,
        scheduler=_parse_scheduler(raw.get("scheduler"), source),
        resources=_parse_resources(raw.get("resources") or {}, "resources", source),
        max_failures=nonneg_int(raw.get("max_failures", 2), "max_failures", source),
        baseline=baseline,
        **quick,
        text=text,
    )


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: a search space must be a mapping of the keys {TOP_KEYS}")
    for key in raw:
        if key not in TOP_KEYS:
            raise SpaceError(
                f"{source}: unknown key '{key}'; a search space has {', '.join(TOP_KEYS)}"
            )
    return raw


@dataclass(frozen=True)
class _Keys:
    """The space's top-level mapping and the errors that name its file and a key."""

    raw: dict[str, Any]
    source: str

    def err(self, key: str, rule: str) -> SpaceError:
        return SpaceError(f"{self.source}: key '{key}' {rule}")

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.raw.get(key) or {}
        if not isinstance(value, dict):
            raise self.err(key, f"must be a mapping, got {type(value).__name__}")
        return value


def _parse_head(keys: _Keys) -> tuple[str, str, str]:
    """(metric, mode, description)."""
    metric = keys.raw.get("metric", "mAP")
    if metric not in COCO_METRICS:
        raise keys.err("metric", f"must be one of {', '.join(COCO_METRICS)}, got {metric!r}")
    mode = keys.raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise keys.err("mode", f"must be 'max' or 'min', got {mode!r}")
    description = keys.raw.get("description", "") or ""
    if not isinstance(description, str):
        raise keys.err("description", "must be text")
    return metric, mode, description


def _parse_axes(
    keys: _Keys, fixed: dict[str, Any], base: TrialConfig
) -> tuple[dict[str, list[Any]], dict[str, Dist], int]:
    """(grid, sample, num_samples): one kind of axis, none also fixed."""
    source = keys.source
    grid = _parse_grid(keys.mapping("grid"), source, base)
    sample = _parse_sample(keys.mapping("sample"), source, base)
    if grid and sample:
        raise SpaceError(
            f"{source}: keys 'grid' and 'sample' cannot be combined (Optuna cannot enumerate a "
            f"grid); make {', '.join(grid)} a `choice` sample axis or run one study per value"
        )
    for key in set(fixed) & (set(grid) | set(sample)):
        raise keys.err(f"fixed.{key}", "is also a search axis; keep it in one place")
    num_samples = _positive_int(keys.raw.get("num_samples", 1), "num_samples", source)
    if num_samples > 1 and not sample:
        raise keys.err(
            "num_samples",
            "only applies to sampled axes; repeat grid points with `--seeds N` instead",
        )
    return grid, sample, num_samples


def _parse_quick(
    keys: _Keys, grid: dict[str, list[Any]], sample: dict[str, Dist], base: TrialConfig
) -> dict[str, Any]:
    """The quick profile's fields of :class:`Space` (``quick``, ``quick_grid`` …): its config
    overrides, checked on top of ``fixed`` (and those of ``quick.cuda`` on top of them)."""
    source = keys.source
    quick = dict(keys.mapping("quick"))
    resources = _optional(quick, "resources", lambda v: _parse_resources(
        v, "quick.resources", source))
    num_samples = _optional(quick, "num_samples", lambda v: _positive_int(
        v, "quick.num_samples", source))
    seeds = _quick_seeds(quick.pop("seeds", None), source)
    budget = _quick_budget(quick.pop("budget", None), seeds, source)
    grid_raw = _sub_mapping(quick.pop("grid", None), "quick.grid", source)
    baseline = _sub_mapping(quick.pop("baseline", None), "quick.baseline", source)
    cuda = _sub_mapping(quick.pop("cuda", None), "quick.cuda", source)
    cuda_resources = _optional(cuda, "resources", lambda v: _parse_resources(
        v, "quick.cuda.resources", source))
    quick_base = config_from_dict(quick, source=f"{source}: quick", base=base)
    cuda_base = config_from_dict(cuda, source=f"{source}: quick.cuda", base=quick_base)
    for key in grid_raw:
        if key not in grid:
            raise keys.err(f"quick.grid.{key}", f"is not a grid axis ({', '.join(grid) or 'none'})")
    quick_grid = _parse_grid(grid_raw, f"{source}: quick", quick_base)
    _check_combinations(grid, sample, base, source)
    for where, b in ((f"{source}: quick", quick_base), (f"{source}: quick.cuda", cuda_base)):
        _check_combinations(grid | quick_grid, sample, b, where)
    return {
        "quick": quick,
        "quick_resources": resources,
        "quick_num_samples": num_samples,
        "quick_grid": quick_grid,
        "quick_baseline": dict(baseline),
        "quick_seeds": seeds,
        "quick_budget": budget,
        "quick_cuda": cuda,
        "quick_cuda_resources": cuda_resources,
    }


def _optional(values: dict[str, Any], key: str, parse: Callable[[Any], Any]) -> Any:
    """``parse(values.pop(key))``, or None when the key is absent."""
    return parse(values.pop(key)) if key in values else None


def _parse_baselines(
    keys: _Keys, grid: dict[str, list[Any]], quick: dict[str, Any]
) -> dict[str, Any]:
    """The baseline (one grid point, every axis given) and its quick stand-in, checked against
    the grid and the quick grid; returns the baseline."""
    baseline = keys.mapping("baseline")
    if baseline and not grid:
        raise keys.err("baseline", "needs grid axes (it names one grid point)")
    for key, value in baseline.items():
        if key not in grid:
            raise keys.err(f"baseline.{key}", f"is not a grid axis ({', '.join(grid)})")
        if value not in grid[key]:
            raise keys.err(
                f"baseline.{key}", f"must be one of the grid values {grid[key]}, got {value!r}"
            )
    if grid and baseline and set(baseline) != set(grid):
        missing = ", ".join(k for k in grid if k not in baseline)
        raise keys.err("baseline", f"must give every grid axis; missing {missing}")
    quick_grid, quick_baseline = quick["quick_grid"], quick["quick_baseline"]
    if quick_baseline and not baseline:
        raise keys.err("quick.baseline", "needs a baseline to stand in for")
    for key, values in quick_grid.items():
        if key in baseline and key not in quick_baseline and baseline[key] not in values:
            raise keys.err(
                f"quick.baseline.{key}", f"is needed: the baseline's {baseline[key]!r} is not "
                f"in the quick grid {values}"
            )
    for key, value in quick_baseline.items():
        values = (grid | quick_grid).get(key)
        if values is None:
            raise keys.err(f"quick.baseline.{key}", f"is not a grid axis ({', '.join(grid)})")
        if value not in values:
            raise keys.err(
                f"quick.baseline.{key}", f"must be one of the quick grid values {values}, "
                f"got {value!r}"
            )
    return baseline


def _parse_grid(grid: dict[str, Any], source: str, base: TrialConfig) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        where = f"{source}: grid.{key}"
        _known_key(key, f"grid.{key}", source)
        if not isinstance(values, list):
            raise SpaceError(f"{where}: a grid axis must be a list of values, got {values!r}")
        if not values:
            raise SpaceError(f"{where}: empty grid axis; give at least one value")
        checked = [getattr(config_from_dict({key: v}, where, base), key) for v in values]
        if len(set(map(repr, checked))) != len(checked):
            raise SpaceError(f"{where}: repeated values {values}")
        out[key] = checked
    return out


def _parse_sample(sample: dict[str, Any], source: str, base: TrialConfig) -> dict[str, Dist]:
    out: dict[str, Dist] = {}
    for key, spec in sample.items():
        where = f"{source}: sample.{key}"
        _known_key(key, f"sample.{key}", source)
        if not isinstance(spec, dict) or "type" not in spec:
            raise SpaceError(
                f"{where}: a sampled axis is a mapping with a `type` "
                f"({', '.join(DIST_KEYS)}), got {spec!r}"
            )
        kind = spec["type"]
        if kind not in DIST_KEYS:
            raise SpaceError(f"{where}: unknown distribution {kind!r}; use {', '.join(DIST_KEYS)}")
        required, optional = DIST_KEYS[kind]
        given = set(spec) - {"type"}
        if required - given:
            raise SpaceError(f"{where}: {kind} needs {', '.join(sorted(required - given))}")
        if given - required - optional:
            extra = ", ".join(sorted(given - required - optional))
            raise SpaceError(f"{where}: {kind} does not take {extra}")
        if kind == "choice":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise SpaceError(f"{where}: choice needs a non-empty list of values")
            # each value as the trial config reads it (a YAML 1e-3 is the float 0.001)
            checked = [getattr(config_from_dict({key: v}, where, base), key) for v in values]
            dist = Dist("choice", values=tuple(checked))
        else:
            low, high = as_float_literal(spec["low"]), as_float_literal(spec["high"])
            numeric = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)
            )
            if not numeric or not (math.isfinite(low) and math.isfinite(high)):
                raise SpaceError(f"{where}: low and high must be numbers, got {low!r}, {high!r}")
            if not low < high:
                raise SpaceError(f"{where}: low must be < high, got {low} and {high}")
            if kind == "loguniform" and low <= 0:
                raise SpaceError(f"{where}: loguniform needs low > 0, got {low}")
            if kind == "int":
                step, log = spec.get("step", 1), spec.get("log", False)
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                    raise SpaceError(f"{where}: int needs integer low and high")
                if not isinstance(step, int) or isinstance(step, bool) or step < 1:
                    raise SpaceError(f"{where}: step must be an integer >= 1, got {step!r}")
                if not isinstance(log, bool) or (log and (low < 1 or step != 1)):
                    raise SpaceError(
                        f"{where}: log must be true/false (log needs low >= 1, step 1)"
                    )
                dist = Dist("int", low=low, high=high, step=step, log=log)
            else:
                dist = Dist(kind, low=float(low), high=float(high))
        for v in dist.corners():  # type and range through the trial config's own rules
            config_from_dict({key: v}, where, base)
        out[key] = dist
    return out


def _check_combinations(
    grid: dict[str, list[Any]], sample: dict[str, Dist], base: TrialConfig, source: str
) -> None:
    """Cross-key rules (min <= max, no_aug_epochs <= epochs) on every pair of axis values."""
    axes = {k: list(v) for k, v in grid.items()} | {k: d.corners() for k, d in sample.items()}
    keys = list(axes)
    pairs = list(itertools.combinations(keys, 2)) or [(k,) for k in keys]
    for combo in pairs:
        for values in itertools.product(*(axes[k] for k in combo)):
            point = dict(zip(combo, values, strict=True))
            config_from_dict(point, f"{source}: axes {point}", base)


def _sub_mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{source}: key '{key}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _known_key(key: Any, where: str, source: str) -> None:
    if key not in config_keys():
        config_from_dict({key: None}, source=f"{source}: {where}")  # raises with a did-you-mean


def _quick_seeds(value: Any, source: str) -> int | str | None:
    """quick.seeds: a number of seeds >= 1, or ``auto``."""
    if value is None or value == "auto":
        return value
    return _positive_int(value, "quick.seeds", source)


def _quick_budget(value: Any, seeds: int | str | None, source: str) -> str | None:
    """quick.budget: the budget of ``quick.seeds: auto`` — trials (12) or a wall time (23m)."""
    if value is None:
        return None
    if seeds != "auto":
        raise SpaceError(
            f"{source}: key 'quick.budget' is the budget of 'quick.seeds: auto'; set "
            "quick.seeds: auto or drop quick.budget"
        )
    from study.space.racing import parse_budget

    try:
        parse_budget(value)
    except StudyError as e:
        raise SpaceError(f"{source}: key 'quick.budget': {e}") from e
    return str(value)


def _positive_int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpaceError(f"{source}: key '{key}' must be an integer >= 1, got {value!r}")
    return value


def nonneg_int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpaceError(f"{source}: key '{key}' must be an integer >= 0, got {value!r}")
    return value


def _number(value: Any, key: str, source: str, low: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
        raise SpaceError(f"{source}: key '{key}' must be a number >= {low}, got {value!r}")
    return float(value)


def _parse_resources(value: Any, key: str, source: str) -> Resources:
    if not isinstance(value, dict):
        raise SpaceError(f"{source}: key '{key}' must be a mapping {{cpus, gpus}}")
    for k in value:
        if k not in ("cpus", "gpus"):
            raise SpaceError(f"{source}: unknown key '{key}.{k}'; resources take cpus and gpus")
    cpus = _number(value.get("cpus", 1), f"{key}.cpus", source, 0.0)
    if cpus <= 0:
        raise SpaceError(f"{source}: key '{key}.cpus' must be > 0, got {cpus}")
    return Resources(cpus=cpus, gpus=_number(value.get("gpus", 0), f"{key}.gpus", source, 0.0))


def _parse_scheduler(value: Any, source: str) -> Scheduler:
    if value is None or value == "none":
        return Scheduler()
    if value == "asha":
        value = {"type": "asha"}
    if not isinstance(value, dict) or value.get("type") not in ("none", "asha"):
        raise SpaceError(
            f"{source}: key 'scheduler' must be 'none', 'asha' or {{type: asha, max_t, "
            f"grace_period, reduction_factor}}, got {value!r}"
        )
    for k in value:
        if k not in ("type", "max_t", "grace_period", "reduction_factor"):
            raise SpaceError(f"{source}: unknown key 'scheduler.{k}'")
    if value["type"] == "none":
        return Scheduler()
    max_t = value.get("max_t")
    if max_t is not None:
        max_t = _positive_int(max_t, "scheduler.max_t", source)
    grace = _positive_int(value.get("grace_period", 1), "scheduler.grace_period", source)
    if max_t is not None and grace > max_t:
        raise SpaceError(f"{source}: key 'scheduler.grace_period' must be <= max_t ({max_t})")
    rf = _number(value.get("reduction_factor", 3), "scheduler.reduction_factor", source, 0.0)
    if rf <= 1:
        raise SpaceError(f"{source}: key 'scheduler.reduction_factor' must be > 1, got {rf}")
    return Scheduler("asha", max_t=max_t, grace_period=grace, reduction_factor=rf)
