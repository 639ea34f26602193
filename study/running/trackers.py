"""Ray Tune's own logger callbacks for TensorBoard, MLflow and W&B, each taught two things:

* **the step is the epoch** (Tune's is its count of reports, which says nothing to a reader):
  every evaluation's losses, ``lr``, the 12 validation COCO numbers, the assignment diagnostics,
  and at the end the test numbers, as the trial reported them (study/running/trial.py);
* **the evaluation preview**: the trainer writes ``eval_preview.jpg`` next to ``last.pt`` at each
  evaluation (model/eval_preview.py) and the trial hands both to Tune as one checkpoint; when
  Tune has persisted it (``log_trial_save``), the image is read from the checkpoint — through
  its filesystem, so it works whatever the storage — and logged at that epoch: TensorBoard
  ``add_image`` (tag ``eval_preview``), MLflow an artifact ``eval_preview/epoch_NNN.jpg``, W&B a
  ``wandb.Image`` under ``eval_preview``.

TensorBoard's callback and what the three share live here; MLflow's in
study/running/track_mlflow.py and W&B's in study/running/track_wandb.py (each imports its package,
so a study imports only what it tracks with). study/running/tracking.py chooses which a study
gets (``--track``); the packages are optional (extras ``track`` in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.air.constants import TRAINING_ITERATION
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL

from model.eval_preview import EVAL_PREVIEW

PREVIEW_TAG = "eval_preview"


def epoch_of(trial: Any, result: dict[str, Any] | None = None) -> int:
    """The epoch of ``result`` (default: the trial's last), else Tune's report count."""
    result = result if result is not None else (trial.last_result or {})
    epoch = result.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch
    return int(result.get(TRAINING_ITERATION) or 0)


def read_preview(trial: Any) -> np.ndarray | None:
    """The evaluation preview in the trial's latest persisted checkpoint, as an RGB uint8
    ``(H, W, 3)`` array; None when that checkpoint has none (``eval_preview_images: 0``, a
    training function that writes none)."""
    import cv2

    ckpt = getattr(trial, "checkpoint", None)
    if ckpt is None:
        return None
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{EVAL_PREVIEW}") as f:
            data = f.read()
    except (FileNotFoundError, OSError):
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else np.ascontiguousarray(image[:, :, ::-1])


class StudyTensorBoard(TBXLoggerCallback):
    """Tune's TensorBoardX logger (event files in each trial's folder of the Tune experiment,
    ``<study>/tune/<trial>/events.out.tfevents.*``), stepped by epoch, with the previews."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        # Tune's logger steps by timesteps_total when a result has it (it is logged too)
        step = epoch_of(trial, result)
        super().log_trial_result(iteration, trial, {**result, TIMESTEPS_TOTAL: step})

    def log_trial_save(self, trial: Any) -> None:
        image = read_preview(trial)
        if image is None:
            return
        if trial not in self._trial_writer:  # its writer closed: the trial has ended (a
            return  # new one would start a second event file for it)
        writer = self._trial_writer[trial]
        writer.add_image(PREVIEW_TAG, image, global_step=epoch_of(trial), dataformats="HWC")
        writer.flush()
