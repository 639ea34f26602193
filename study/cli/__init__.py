"""What every command of study/ shares (run, train, evaluate, detect, pretrain): the trial config
from a file or a checkpoint, ``--set`` and the dedicated flags, and the ending — one line on
stderr and the exit code for each kind of error.

Exit codes: 0 done; 2 bad input (a file, a key, a value, the data, weights that cannot be had:
the message names it and the fix); 1 a run that failed (the command says how); 130 Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import TrialConfig, config_from_dict, load_config, parse_override

BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 130


def resolve_config(
    base: TrialConfig | str | Path | None, overrides: list[str], **flags: Any
) -> TrialConfig:
    """``base`` (a config, a YAML file, or None for the defaults), then the ``--set`` overrides,
    then the dedicated flags, which win (None = not given). A ``data`` flag is made absolute."""
    if not isinstance(base, TrialConfig):
        base = load_config(base) if base else TrialConfig()
    values: dict[str, Any] = dict(parse_override(text) for text in overrides)
    given = {k: v for k, v in flags.items() if v is not None}
    if "data" in given:
        given["data"] = str(Path(given["data"]).resolve())
    values.update(given)
    return config_from_dict(values, source="command line", base=base) if values else base


def input_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input (exit 2): model/'s (model/error_bases.py) and study/'s one
    base, :class:`~study.layout.StudyError`."""
    from model.error_bases import input_errors as model_input_errors
    from study.layout import StudyError

    return (*model_input_errors(), StudyError)


def run_command(
    prog: str | None,
    run: Callable[[], int],
    *,
    bad_input: tuple[type[BaseException], ...] = (),
    failures: tuple[type[BaseException], ...] = (),
    failed: str = "failed",
    interrupted: Callable[[], str] | None = None,
) -> int:
    """``run()``'s exit code; an error becomes one line on stderr and its code.

    ``prog: error: …`` (2) for :func:`input_errors` and ``bad_input``; ``prog: <failed>: …`` (1)
    for ``failures``; Ctrl-C prints ``interrupted()`` (130) when given, else propagates. Without
    ``prog`` the lines start at ``error:``.
    """
    prefix = f"{prog}: " if prog else ""
    try:
        return run()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted(), file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if isinstance(e, failures):
            print(f"{prefix}{failed}: {e}", file=sys.stderr)
            return FAILED
        if isinstance(e, (*input_errors(), *bad_input)):
            print(f"{prefix}error: {e}", file=sys.stderr)
            return BAD_INPUT
        raise
