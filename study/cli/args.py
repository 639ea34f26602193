"""A study's settings, ``StudyArgs``, and the study CLI's parser made from them: one definition.

Each field is a flag: ``--<name with dashes>`` (a ``bool`` that defaults to True becomes
``--no-<name>``), its type from the annotation (``X | None``: X; ``bool``: a switch; a list: the
repeatable ``--set``), its default from the field's, its help, choices and metavar from the
field's metadata (:func:`flag`). ``run_study`` callers build ``StudyArgs`` directly; study/run.py
parses the command line into one.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config import DEVICES, add_override_argument
from study.layout import StudyError
from study.space.racing import BUDGET_PER_ARM, parse_budget, parse_seeds

DEFAULT_TRAIN_FN = "model.trainer:train_detector"


def flag(default: Any, help: str | Callable[[], str], **argparse_kw: Any) -> Any:
    """A StudyArgs field and its flag: ``help`` (a callable when it lists what is installed),
    and ``choices`` / ``metavar`` / ``dest`` passed on to ``add_argument``."""
    meta = {"help": help, **argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _space_help() -> str:
    from study.space.definition import shipped_spaces

    shipped = ", ".join(q.stem for q in shipped_spaces())
    return f"space name (search_spaces/NAME.yaml: {shipped}) or a YAML path; default ablation"


@dataclass
class StudyArgs:
    # (the flags appear in --help in this order)
    space: str = flag("ablation", _space_help)
    data: str | None = flag(
        None, "dataset folder; without it: embedded dataset + the space's quick profile"
    )
    out: Path | None = flag(None, "study folder (default studies/<space>-<timestamp>)")
    name: str | None = flag(None, "study name: the folder studies/NAME (when --out is not given)")
    address: str | None = flag(
        None,
        "join this running Ray cluster (its head node, e.g. 10.0.0.5:6379); with token "
        "authentication on, run with RAY_AUTH_MODE=token and the cluster's token in "
        "~/.ray/auth_token or RAY_AUTH_TOKEN",
    )
    storage: str | None = flag(
        None,
        "where the trials' records, checkpoints and Tune's state live: s3://bucket/prefix, "
        "gs://bucket/prefix or a path every node mounts (default: the study folder, for one "
        "machine); a cluster without a shared filesystem needs it, and --resume --storage URI "
        "--out DIR continues from it alone",
        metavar="URI",
    )
    gpus_per_trial: float | None = flag(
        None, "GPUs per trial; fractions share a GPU (e.g. 0.25)"
    )
    cpus_per_trial: float | None = flag(
        None, "CPUs per trial (also the trial's torch threads)"
    )
    max_concurrent: int | None = flag(None, "at most this many trials at once")
    seeds: str | None = flag(  # None: the quick profile's seeds (else 1)
        None,
        "repeat every grid point with seeds 0..N-1, paired by seed (default 1; the quick "
        "profile sets its own); auto: 2 seeds of every grid point, then more only where a "
        "comparison is undecided and could still be decided within --budget",
        metavar="N|auto",
        type=lambda text: _checked(parse_seeds, text),
    )
    budget: str | None = flag(
        None,
        "the budget of --seeds auto: a number of trials (16) or a wall time (90s, 25m, 2h); "
        f"default {BUDGET_PER_ARM} trials per grid point",
        metavar="TRIALS|TIME",
        type=lambda text: _checked(parse_budget, text) and text,
    )
    full: bool = flag(  # the quick profile over every grid value of the space
        False, "without --data: run every grid value of the space, not only the quick profile's"
    )
    device: str = flag(  # which quick profile; the trials' device
        "auto",
        "auto: the quick profile for CUDA when this machine has a GPU, else for CPU; cpu "
        "forces the CPU one; with --data it sets the trials' device",
        choices=DEVICES,
    )
    overrides: list[str] = flag(  # --set (model.config.add_override_argument)
        [], "override a trial-config key for every trial (repeatable); on an axis it pins it"
    )
    resume: bool = flag(
        False,
        "continue the study in --out (or the latest one); only a study you created: it "
        "loads Ray Tune's pickled state, which can run code",
    )
    force: bool = flag(  # write into a non-empty --out that holds no study
        False,
        "write a new study into a non-empty --out that holds no study (replacing its "
        "results.csv, report.md, best_config.yaml …)",
    )
    strict: bool = flag(  # any dropped/clipped/fixed image or box stops the study
        False, "stop before any trial if the data check drops, clips or fixes an image or a box"
    )
    dry_run: bool = flag(False, "print the planned trials as JSON lines and exit")
    skip_unavailable: bool = flag(
        False,
        "run without the trials whose COCO weights cannot be downloaded (instead of stopping)",
    )
    download: bool = flag(True, "never download COCO weights")  # --no-download
    dashboard_host: str = flag(
        "127.0.0.1",
        "interface of the Ray dashboard (default 127.0.0.1, as every other Ray port of a "
        "local study). Ray >= 2.59 turns token authentication on for the local session: the "
        "dashboard asks for the token that `ray get-auth-token` prints (~/.ray/auth_token); "
        "RAY_AUTH_MODE=disabled turns it off — then anyone reaching the port can run code",
    )
    cache: Path | None = flag(None, "pretraining artifact cache (default <study>/pretrain_cache)")
    max_failures: int | None = flag(
        None,
        "retries of a crashed trial (default: the space's); a non-finite loss, a config "
        "or a data error is never retried",
    )
    searcher_seed: int = flag(0, "seed of the Optuna sampler")
    track: list[str] = flag(  # study/running/tracking.py
        [],
        "log every trial to tensorboard, mlflow and/or wandb (comma-separated or repeated; "
        "none: no tracker); default: tensorboard when tensorboardX is installed",
        metavar="TRACKERS",
        type=lambda text: _checked(_parse_track, text) and text,
    )
    train_fn: str = flag(
        DEFAULT_TRAIN_FN,
        "training function with train_detector's signature (tests and benchmarks); "
        "MODULE may be a path/to/file.py",
        metavar="MODULE:FUNCTION",
    )


def _parse_track(text: str) -> list[str]:
    from study.running.tracking import parse_track

    return parse_track(text)


def _checked(parse: Callable[[str], Any], text: str) -> Any:
    """An argparse type from a parser that raises StudyError: argparse's own one-line error."""
    try:
        return parse(text)
    except StudyError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def study_defaults() -> dict[str, Any]:
    """Every StudyArgs default (the CLI's defaults)."""
    out = {}
    for f in fields(StudyArgs):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def flag_type(f: Field[Any]) -> Any:
    """The field's type without ``| None`` (``float | None`` → float)."""
    hint = typing.get_type_hints(StudyArgs)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is not list and args else hint


def flag_name(f: Field[Any]) -> str:
    dashed = f.name.replace("_", "-")
    return f"--no-{dashed}" if f.default is True else f"--{dashed}"


def build_parser() -> argparse.ArgumentParser:
    """The study CLI's parser, one flag per StudyArgs field (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Ray Tune ablation / hyperparameter study of YOLOX on small floating waste."
    )
    defaults = study_defaults()
    for f in fields(StudyArgs):
        meta = dict(f.metadata)
        help_ = meta.pop("help")
        help_ = help_() if callable(help_) else help_
        kind = flag_type(f)
        if f.name == "overrides":  # the --set KEY=VALUE of every command
            add_override_argument(p, help_)
            continue
        if typing.get_origin(kind) is list:  # a repeatable flag (--track)
            p.add_argument(flag_name(f), dest=f.name, help=help_, action="append", **meta)
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": help_, **meta}
        if kind is bool:
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            kw.setdefault("type", kind)  # (a field's own parser, e.g. --seeds N|auto)
            kw["default"] = defaults[f.name]
        p.add_argument(flag_name(f), **kw)
    p.set_defaults(**defaults)
    return p
