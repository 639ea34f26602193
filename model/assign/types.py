"""What every assigner receives and returns: the interface of the registry in ``model.assign``.

An assigner is a plain function ``(inputs, settings, state) -> BatchAssignment``
(``model.assign.AssignFn``) run under ``torch.no_grad()``; the loss asks ``model.assign.ASSIGNERS``
for it by the config's ``assigner`` name and never looks inside. Shapes: B images, G object rows
per image (padded), A anchor points, C classes; boxes are (cx, cy, w, h) in input pixels.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class AssignError(ValueError):
    """Inputs an assigner cannot take (shapes, class ids); the message names them and the fix."""


class AssignInputs(NamedTuple):
    """One batch as an assigner sees it (no gradient: the loss hands in detached tensors).

    gt_bboxes: (B, G, 4) float32 objects, cx, cy, w, h in input pixels.
    gt_classes: (B, G) class ids (any dtype; integers in [0, C) on valid rows).
    gt_valid: (B, G) bool, False = padding row (its values mean nothing).
    pred_bboxes: (B, A, 4) decoded predicted boxes, cx, cy, w, h in input pixels.
    cls_logits: (B, A, C) class logits; obj_logits: (B, A) objectness logits.
    x_shifts, y_shifts: (A,) grid-cell indices of each point; strides: (A,) pixels per cell.
    """

    gt_bboxes: Tensor
    gt_classes: Tensor
    gt_valid: Tensor
    pred_bboxes: Tensor
    cls_logits: Tensor
    obj_logits: Tensor
    x_shifts: Tensor
    y_shifts: Tensor
    strides: Tensor

    @property
    def grid(self) -> tuple[Tensor, Tensor, Tensor]:
        """(x_shifts, y_shifts, strides), each (A,)."""
        return self.x_shifts, self.y_shifts, self.strides


class Assignment(NamedTuple):
    """SimOTA result for one image with A anchors and F foregrounds.

    fg_mask: (A,) bool, anchors assigned to an object.
    matched_gt_inds: (F,) int64, the object (row of ``gt_bboxes``) of each foreground anchor,
        in anchor order.
    pred_ious: (F,) float32, IoU of each foreground's predicted box with its object.
    """

    fg_mask: Tensor
    matched_gt_inds: Tensor
    pred_ious: Tensor

    @property
    def num_fg(self) -> int:
        return int(self.matched_gt_inds.numel())


class BatchAssignment(NamedTuple):
    """An assigner's result for B images of A anchors, per anchor so that a loss needs no image
    loop.

    fg_mask: (B, A) bool.
    matched_gt_inds: (B, A) int64, the object (index along G of ``gt_bboxes``), -1 for background.
    pred_ious: (B, A) float32, IoU of the prediction with the matched object, 0 for background.
    ignore_mask: (B, A) bool or None (YOLOF's ignore rules): background anchors left out of the
        objectness loss. None = none ignored.
    weights: (B, A) float32 or None (HAMBox): loss weight of each foreground. None = 1 for all.
    smooth_l1_beta: float or None (Dynamic R-CNN): the L1 branch is SmoothL1 of this beta and
        the positives' errors are fed back to the assigner's state. None = plain L1 (official).
    cls_quality: (B, A) float32 or None (TOOD): each foreground's soft class target, used where
        ``cls_target`` puts the IoU. None = the IoU of its prediction (official).
    """

    fg_mask: Tensor
    matched_gt_inds: Tensor
    pred_ious: Tensor
    ignore_mask: Tensor | None = None
    weights: Tensor | None = None
    smooth_l1_beta: float | None = None
    cls_quality: Tensor | None = None

    def image(self, b: int) -> Assignment:
        """Image ``b`` in the layout of ``model.assign.simota.simota``."""
        fg = self.fg_mask[b]
        return Assignment(fg, self.matched_gt_inds[b][fg], self.pred_ious[b][fg])
