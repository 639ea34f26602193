"""``--seeds auto``: seeds where they decide something.

A grid study with ``--seeds auto`` runs two seeds of every grid point (arm) first; then, round by
round, it adds seeds only to the comparisons (the report's one-factor contrasts,
study/outputs/report.py) that are still undecided and could still be decided within the budget,
and stops adding to the decided ones. The rule, after each round (on the **validation** split:
how many seeds to spend is a choice, and choices never look at test):

1. Each comparison's paired difference over the seeds its two arms share
   (study/outputs/stats.py), its p-value, and Holm's adjustment over all comparisons. Decided =
   Holm-adjusted p < 0.05.
2. For an undecided comparison with n pairs, mean difference d and standard deviation s of the
   per-seed differences: the smallest n' at which the paired interval at Holm's level for the
   undecided ones, α / (m − decided), would exclude 0 if d and s stay as observed
   (:func:`study.outputs.stats.seeds_to_separate`). None (d = 0, or more seeds than the budget could
   ever give) → *not separable at this budget*.
3. Its next step is min(n', 2n) seeds (at least n + 1): a noisy estimate of n' is revised after
   each round instead of spent at once. Cost = the seeds its two arms lack for that step.
4. Cheapest first (then the smallest p), comparisons are funded while the budget allows: a trial
   budget counts trials; a wall-time budget converts the time left into trials with the mean
   trial time so far and the number of trials that run at once. A comparison that cannot be
   funded is *not separable at this budget*.
5. No comparison funded → the study ends; the report's findings then say, on the test split,
   which comparisons are decided and which are not separated.

Every round is written to ``race.json`` (the trials it added with their configs and pretraining
jobs, and why), so ``--resume`` continues exactly where the study stopped. The sequential rule
peeks at validation results between rounds; the test split, on which the findings are stated,
is never looked at, and the report says how many seeds each comparison ended with.

Ray-free: :func:`next_round` takes the results rows and returns the seeds to add.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.files import atomic_write_json
from study.layout import RACE, StudyError

if TYPE_CHECKING:
    from study.outputs.report import Comparison

INITIAL_SEEDS = 2  # every arm's first round: the fewest that give a paired interval
MAX_SEEDS = 30  # no comparison is given more seeds than this, whatever the budget
BUDGET_PER_ARM = 6  # default budget of --seeds auto: this many trials per arm on average


def parse_seeds(text: str | int) -> int | str:
    """``--seeds``: a number of seeds (>= 1) or ``auto``."""
    if isinstance(text, int):
        return text
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise StudyError(f"--seeds must be a number of seeds or 'auto', got {text!r}") from None
    return n


def parse_budget(text: str | int | float) -> tuple[int | None, float | None]:
    """``--budget``: ``N`` trials, or a wall time ``90s`` / ``25m`` / ``2h`` / ``1.5h``
    → (trials, seconds)."""
    if isinstance(text, int) and not isinstance(text, bool):
        found = re.fullmatch(r"(\d+)", str(text))
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not found:
        raise StudyError(
            f"--budget must be a number of trials (16) or a wall time (90s, 25m, 2h), got {text!r}"
        )
    unit = found.group(2) if found.lastindex and found.lastindex >= 2 else ""
    if not unit:
        if "." in found.group(1) or int(found.group(1)) < 1:
            raise StudyError(f"--budget {text}: a number of trials must be a whole number >= 1")
        return int(found.group(1)), None
    seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise StudyError(f"--budget {text}: a wall time must be > 0")
    return None, seconds


@dataclass(frozen=True)
class Race:
    """The settings of ``--seeds auto`` (saved in plan.json)."""

    budget_trials: int | None = None  # at most this many trials in all
    budget_s: float | None = None  # or: stop adding rounds this long after the study began
    initial_seeds: int = INITIAL_SEEDS
    max_seeds: int = MAX_SEEDS

    def describe(self) -> str:
        budget = (
            f"{self.budget_trials} trials" if self.budget_trials is not None
            else f"{self.budget_s / 60:.0f} min of wall time"
        )
        return (
            f"--seeds auto: {self.initial_seeds} seeds of every grid point, then seeds only "
            f"where a comparison is undecided and could still be decided within the budget "
            f"({budget}; decisions on the validation split, see the Seeds section)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_trials": self.budget_trials,
            "budget_s": self.budget_s,
            "initial_seeds": self.initial_seeds,
            "max_seeds": self.max_seeds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Race:
        return cls(d.get("budget_trials"), d.get("budget_s"), d.get("initial_seeds", 2),
                   d.get("max_seeds", MAX_SEEDS))


@dataclass
class Status:
    """One comparison after a round (on validation)."""

    name: str
    at: str
    seeds: int  # pairs it has
    diff: float | None
    holm_p: float | None
    state: str  # "decided", "adding seeds", "not separable at this budget", "waiting"
    why: str
    target: int | None = None  # the seeds its arms get in the next round

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Round:
    """What :func:`next_round` decided: the seeds to add per arm, and every comparison's state."""

    add: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)  # arm values -> seeds
    statuses: list[Status] = field(default_factory=list)
    affordable: int | None = None  # trials the budget could still pay for

    @property
    def trials(self) -> int:
        return sum(len(s) for s in self.add.values())


def affordable_trials(
    race: Race, trials_so_far: int, elapsed_s: float, trial_s: float | None, slots: int
) -> int:
    """How many more trials the budget pays for: a trial budget counts them; a wall-time one
    divides the time left by the mean trial time, times the trials that run at once."""
    if race.budget_trials is not None:
        return max(race.budget_trials - trials_so_far, 0)
    assert race.budget_s is not None
    if not trial_s or trial_s <= 0:
        return 0
    return max(int((race.budget_s - elapsed_s) // trial_s) * max(slots, 1), 0)


def next_round(
    rows: Sequence[dict[str, Any]],
    axes: Sequence[str],
    baseline: dict[str, Any],
    metric: str,
    affordable: int,
    max_seeds: int = MAX_SEEDS,
    alpha: float = 0.05,
) -> Round:
    """The seeds to add (see the module docstring), from the finished trials' ``val_<metric>``.

    ``rows``: results rows (``status``, ``seed``, the axes, ``val_<metric>``). Arms are the grid
    points; a new seed of an arm is the smallest seed it has not run or planned.
    """
    from study.outputs.report import (  # (the report's grid and comparisons)
        comparisons,
        group_points,
    )
    from study.outputs.stats import compare, holm

    key = f"val_{metric}"
    points = group_points(rows, axes)
    comps = [
        c for c in comparisons(points, axes, baseline)
        if c.arm.metric(key) and c.ref.metric(key)
    ]
    diffs = [compare(c.arm.by_seed(key), c.ref.by_seed(key)) for c in comps]
    adjusted = holm([d.p for d in diffs])
    decided = sum(1 for p in adjusted if p is not None and p < alpha)
    step = _Step(key, _seeds_taken(rows, axes, points, key), affordable, max_seeds,
                 alpha / max(len(comps) - decided, 1))  # Holm's level for the undecided
    out = Round(affordable=affordable)
    candidates: list[tuple[int, float, int, Status, Comparison]] = []
    for i, (c, d, p) in enumerate(zip(comps, diffs, adjusted, strict=True)):
        st = Status(c.name, c.at, d.n, d.diff, p, "waiting", "")
        out.statuses.append(st)
        if p is not None and p < alpha:
            st.state, st.why = "decided", f"Holm-adjusted p {p:.3f} < {alpha:g}"
            continue
        cost = step.target(c, d, st)
        if cost is not None:
            candidates.append((cost, p if p is not None else 1.0, i, st, c))
    out.add = step.fund(candidates)
    return out


def _seeds_taken(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], points: Sequence[Any], key: str
) -> dict[tuple[Any, ...], set[int]]:
    """arm -> the seeds it has: finished, and planned (still running, or failed), which are
    never planned again."""
    have = {p.values: set(p.by_seed(key)) for p in points}
    for r in rows:
        arm = tuple(r.get(a) for a in axes)
        if arm in have and r.get("seed") is not None:
            have[arm].add(int(r["seed"]))
    return have


@dataclass
class _Step:
    """One round's arithmetic: the seeds each undecided comparison should reach, and which of
    them the budget funds."""

    key: str
    have: dict[tuple[Any, ...], set[int]]
    affordable: int
    max_seeds: int
    level: float

    def target(self, c: Comparison, d: Any, st: Status) -> int | None:
        """Set ``st.target`` (the seeds both arms should have) and return what reaching it
        costs in trials; None when it cannot be separated within the budget (``st`` says why)."""
        from study.outputs.stats import seeds_to_separate

        n = d.n
        shared = len(set(c.arm.by_seed(self.key)) & set(c.ref.by_seed(self.key)))
        if shared < 2:  # (a trial of the first round failed) pair them up first
            target, st.why = 2, "fewer than two shared seeds"
        else:
            s = _diff_std(c, self.key)
            reach = min(self.max_seeds, n + self.affordable // 2)
            need = (seeds_to_separate(d.diff, s, n, self.level, self.max_seeds)
                    if s is not None else None)
            if need is None or need > reach:
                st.state = "not separable at this budget"
                st.why = self._why_not(d.diff, s, need)
                return None
            target = min(need, max(2 * n, n + 1))
            st.why = f"about {need} seeds per arm would separate it"
        st.target = target
        return sum(_missing(self.have[x], target) for x in (c.arm.values, c.ref.values))

    def _why_not(self, diff: float, s: float | None, need: int | None) -> str:
        if s is None:
            return "no spread estimate"
        if diff == 0:
            return "no difference seen"
        if need is None:
            return (
                f"would need more than {self.max_seeds} seeds per arm at this spread "
                f"(difference {diff:+.4f}, per-seed sd {s:.4f})"
            )
        return (
            f"about {need} seeds per arm would separate it; the budget pays for "
            f"{self.affordable} more trial(s)"
        )

    def fund(
        self, candidates: list[tuple[int, float, int, Status, Comparison]]
    ) -> dict[tuple[Any, ...], list[int]]:
        """Cheapest first (then the smallest p): fund comparisons while the budget allows, an
        arm shared by two comparisons paid once; returns arm -> the new seeds."""
        have, spent = self.have, 0
        planned: dict[tuple[Any, ...], int] = {}  # arm -> seeds it will have
        for _cost, _p, _i, st, c in sorted(candidates, key=lambda x: (x[0], x[1], x[2])):
            assert st.target is not None
            extra = {
                x: max(st.target, planned.get(x, len(have[x])))
                for x in (c.arm.values, c.ref.values)
            }
            cost = sum(_missing(have[x], n) - _missing(have[x], planned.get(x, len(have[x])))
                       for x, n in extra.items())
            if spent + cost > self.affordable:
                st.state = "not separable at this budget"
                st.why = (st.why + "; " if st.why else "") + (
                    f"the budget pays for {self.affordable - spent} more trial(s), this needs "
                    f"{cost}"
                )
                st.target = None
                continue
            spent += cost
            planned.update(extra)
            st.state = "adding seeds"
        new = {arm: _new_seeds(have[arm], n) for arm, n in planned.items()}
        return {arm: seeds for arm, seeds in new.items() if seeds}


def _diff_std(c: Comparison, key: str) -> float | None:
    a, b = c.arm.by_seed(key), c.ref.by_seed(key)
    d = [a[k] - b[k] for k in sorted(set(a) & set(b))]
    if len(d) < 2:
        return None
    mean = sum(d) / len(d)
    return math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))


def _missing(seeds: set[int], n: int) -> int:
    """Trials an arm lacks to have seeds 0..n-1."""
    return sum(1 for s in range(n) if s not in seeds)


def _new_seeds(seeds: set[int], n: int) -> list[int]:
    return [s for s in range(n) if s not in seeds]


# --- race.json --------------------------------------------------------------------------------


def read_rounds(study_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(study_dir) / RACE
    return json.loads(path.read_text())["rounds"] if path.is_file() else []


def write_round(study_dir: Path, record: dict[str, Any]) -> None:
    rounds = read_rounds(study_dir) + [{"time": time.time(), **record}]
    atomic_write_json(study_dir / RACE, {"rounds": rounds})


def race_section(study_dir: Path) -> list[str]:
    """The report's Seeds section: what each round added and why, and where every comparison
    ended (on the validation split); [] for a study without ``--seeds auto``."""
    rounds = read_rounds(study_dir)
    if not rounds:
        return []
    lines = []
    for r in rounds:
        added = [t["id"] for t in r.get("trials", [])]
        what = f"added {len(added)} trial(s): {', '.join(added)}" if added else "added nothing"
        lines.append(f"- after round {r['round']}: {what}")
    last = rounds[-1].get("statuses", [])
    if last:
        from study.outputs.report import table

        body = [
            [s["name"], s["at"] or "–", str(s["seeds"]),
             "–" if s["diff"] is None else f"{s['diff']:+.4f}",
             "–" if s["holm_p"] is None else f"{s['holm_p']:.3f}", s["state"], s["why"]]
            for s in last
        ]
        lines += [
            "",
            "Where each comparison ended, on the **validation** split the seeds were spent on "
            "(the findings above are on test):",
            "",
            *table(["comparison", "at", "seeds", "Δ val", "p (Holm)", "state", "why"], body),
        ]
    return lines
