"""Ray Tune's MLflow logger for a study (study/running/trackers.py says what the trackers log):
one MLflow run per trial, named by the trial id, its config as parameters, every evaluation's
numbers stepped by epoch, the evaluation previews as artifacts ``eval_preview/epoch_NNN.jpg``."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray.air.integrations.mlflow import MLflowLoggerCallback

from study.running.trackers import PREVIEW_TAG, epoch_of, read_preview


class StudyMLflow(MLflowLoggerCallback):
    """``MLflowLoggerCallback(tracking_uri=…, experiment_name=…, tags=…)``, stepped by epoch,
    with the previews; ``artifact_location``: where a new experiment keeps its artifacts (a
    local store's default is a folder in the current directory)."""

    def __init__(self, *, artifact_location: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact_location = artifact_location

    def setup(self, *args: Any, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # (its store's set-up lines)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.experiment_name and client.get_experiment_by_name(self.experiment_name) is None:
            client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        super().setup(*args, **kwargs)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        self.mlflow_util.log_metrics(
            run_id=self._trial_runs[trial], metrics_to_log=result, step=epoch_of(trial, result)
        )

    def log_trial_save(self, trial: Any) -> None:
        image = read_preview(trial)
        if image is None or trial not in self._trial_runs:
            return
        import cv2
        from mlflow.tracking import MlflowClient

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"epoch_{epoch_of(trial):03d}.jpg"
            cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
            MlflowClient(tracking_uri=self.tracking_uri).log_artifact(
                self._trial_runs[trial], str(path), artifact_path=PREVIEW_TAG
            )
