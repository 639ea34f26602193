"""A sampled study's best trial as its Optuna study holds it, so the report, best_config.yaml
and the summary line name the trial ``optuna-dashboard`` and ``study.best_trial`` name.

The searcher (study/running/searcher.py) gives each Optuna trial the value the report ranks —
the chosen checkpoint's validation metric, with ``--seeds N`` the mean over the proposal's
finished seeds — so the two rules are one, but Optuna settles a tie its own way (the storage's
order) and a mean of floats may round differently here: reading Optuna's choice back removes
both. The report then takes, of that proposal's trials (its seeds), the best on validation
(study/outputs/export.py ``choose_best``), as for a grid point. Without the storage (a grid
study, a sampled study from before it, a file that cannot be read), the same rule is applied to
results.csv's rows: :func:`best_of_sampled`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.layout import OPTUNA_DB, OPTUNA_SEEDS, OPTUNA_TRIAL, optuna_url
from study.outputs.export import choose_best


@dataclass(frozen=True)
class OptunaBest:
    """Optuna's best trial: its number, value and the folders of its Tune trials (seeds)."""

    number: int
    value: float
    folders: tuple[str, ...]


def history_lines(study_dir: Path) -> list[str]:
    """Where a sampled study's Optuna history is and the command that shows it."""
    db = Path(study_dir).resolve() / OPTUNA_DB
    return [
        f"Optuna history: {db} (study {Path(study_dir).name}); open it with "
        f"`optuna-dashboard {optuna_url(study_dir)}`"
    ]


def optuna_best(study_dir: Path) -> OptunaBest | None:
    """``study.best_trial`` of the study's Optuna storage, or None (no storage, no COMPLETE
    trial, a trial without the folder attribute)."""
    if not (Path(study_dir) / OPTUNA_DB).is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    url = optuna_url(study_dir)
    try:
        names = optuna.get_all_study_names(storage=url)
        # the folder's name; a renamed folder keeps its one study under the old name
        name = Path(study_dir).name if Path(study_dir).name in names else None
        if name is None and len(names) != 1:
            return None
        best = optuna.load_study(study_name=name or names[0], storage=url).best_trial
    except (ValueError, KeyError, RuntimeError):
        return None
    folders = best.user_attrs.get(OPTUNA_SEEDS) or [best.user_attrs.get(OPTUNA_TRIAL)]
    if not all(isinstance(f, str) for f in folders) or best.value is None:
        return None
    return OptunaBest(best.number, float(best.value), tuple(folders))


def best_of_sampled(
    rows: Sequence[dict[str, Any]], metric: str, mode: str, keys: Sequence[str],
    study_dir: Path,
) -> tuple[dict[str, Any] | None, OptunaBest | None]:
    """The report's best trial of a sampled study (see the module docstring) and Optuna's best
    trial it came from (None: the rule applied to the rows, grouped by the sampled ``keys``)."""
    found = optuna_best(study_dir)
    if found is not None:
        pool = [r for r in rows if r.get("id") in found.folders]
        best = choose_best(pool, metric, mode)
        if best is not None:
            return best, found
    return choose_best(rows, metric, mode, keys), None
