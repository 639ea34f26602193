"""Backbone pretraining for the FloW study: center-loss classifier (strategy 1), SSL (strategy 3).

Each distinct pretraining runs once; ``study.artifacts.cache.ArtifactCache`` keys its artifact by
:func:`pretrain_settings` and every trial that needs it reuses the file.
"""

from __future__ import annotations

from model.pretraining.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    load_artifact,
    load_pretrained_backbone,
    pretrain_settings,
    run_pretraining,
)
from model.pretraining.common import PretrainDataError
from model.pretraining.sources import data_fingerprint

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "PretrainDataError",
    "data_fingerprint",
    "load_artifact",
    "load_pretrained_backbone",
    "pretrain_settings",
    "run_pretraining",
]
