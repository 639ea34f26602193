"""Fixtures the study tests share."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import ray  # a dependency: its absence fails, never skips


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray session for a test module (2 CPUs, no dashboard); its GCS address."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
