"""The errors of model/ that mean the input is wrong (a config, the data, a checkpoint, an
artifact, weights): each package has one base, and every message names the file or key and the
fix. A command maps them to exit code 2 (study/cli), and a study's trial does not retry them
(study/running/trial.py): a retry would only fail the same way. Imported on demand, so a caller
that never meets one never loads torch for them."""

from __future__ import annotations


def input_errors() -> tuple[type[BaseException], ...]:
    """The bases of the errors that mean bad input, one per package of model/."""
    from model.assign.types import AssignError
    from model.checkpoint import CheckpointError
    from model.config import ConfigError
    from model.data.raw import DataError
    from model.pretraining.common import PretrainingError
    from model.yolox.errors import YOLOXError

    return (ConfigError, DataError, CheckpointError, PretrainingError, YOLOXError, AssignError)


def deterministic_errors() -> tuple[type[BaseException], ...]:
    """What a retry from the last checkpoint would only repeat: bad input, or a non-finite
    loss (:class:`model.trainer.TrainingError`)."""
    from model.trainer import TrainingError

    return (*input_errors(), TrainingError)
