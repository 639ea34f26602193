"""Label assignment: which predictions learn which object, one module per rule.

``ASSIGNERS`` maps each value of the config's ``assigner`` (``model.config.Assigner``) to its
rule's :class:`AssignFn`; :func:`assign_batch` runs the configured one and HAMBox on top. Adding a
rule: a module with the rule and its ``assign`` entry, a line below (and in ``PAPER_K`` if it has
a k), the name in the ``Assigner`` Literal, and its test. Modules:

- ``types``: what an assigner receives (``AssignInputs``) and returns (``BatchAssignment``);
  their signature is :class:`AssignFn` below;
- ``settings``: ``AssignSettings``, the config keys they read;
- ``overlap``: IoU and NWD; ``points``: pieces the point-based rules share;
- ``simota`` (+ ``simota_cost``), ``atss``, ``uniform``, ``topk``, ``dynamic``, ``tood``: the
  rules;
- ``hambox``: compensation on top of any rule; ``diagnostics``: counts by object size.
"""

from __future__ import annotations

from typing import Protocol, get_args

from model.assign import atss, dynamic, hambox, simota, tood, topk, uniform
from model.assign.dynamic import DynamicState
from model.assign.settings import ASSIGN_MODES, AssignSettings
from model.assign.types import AssignError, AssignInputs, Assignment, BatchAssignment
from model.config import Assigner


class AssignFn(Protocol):
    """An entry of ``model.assign.ASSIGNERS``: the rule applied to a batch.

    ``settings`` are the trial's :class:`~model.assign.settings.AssignSettings` (each rule reads
    the fields it needs); ``state`` is the head's :class:`~model.assign.dynamic.DynamicState`,
    read (and fed back through ``smooth_l1_beta``) by ``dynamic`` only.
    """

    def __call__(
        self, inputs: AssignInputs, settings: AssignSettings, state: DynamicState
    ) -> BatchAssignment: ...


ASSIGNER_NAMES: tuple[str, ...] = get_args(Assigner)
ASSIGNERS: dict[str, AssignFn] = {
    "simota": simota.assign,
    "atss": atss.assign,
    "uniform": uniform.assign,
    "topk": topk.assign,
    "dynamic": dynamic.assign,
    "tood": tood.assign,
}
# assign_k: 0 means the paper's k of the rule (rules without a k are not listed)
PAPER_K: dict[str, int] = {
    "atss": atss.ATSS_K,
    "uniform": uniform.UNIFORM_K,
    "topk": topk.TOPK_K,
    "tood": tood.TOOD_K,
}

if set(ASSIGNERS) != set(ASSIGNER_NAMES):  # pragma: no cover - a programming error (tested)
    raise AssignError(
        "model/assign/__init__.py: ASSIGNERS needs one entry per value of model.config.Assigner; "
        f"no entry for {sorted(set(ASSIGNER_NAMES) - set(ASSIGNERS))}, not in the Literal "
        f"{sorted(set(ASSIGNERS) - set(ASSIGNER_NAMES))}: add the rule's line or its name"
    )


def default_k(assigner: str) -> int:
    """The paper value of ``assign_k`` for ``assigner`` (0 where it has no k)."""
    return PAPER_K.get(assigner, 0)


def assign_batch(
    inputs: AssignInputs, settings: AssignSettings, state: DynamicState
) -> BatchAssignment:
    """The assignment of a training step: the ``assigner`` of ``settings``, then HAMBox
    compensation when ``hambox`` is set. Tensors as :class:`AssignInputs` (detached)."""
    asg = ASSIGNERS[settings.assigner](inputs, settings, state)
    if settings.hambox:
        asg = hambox.hambox(asg, inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes)
    return asg


__all__ = [
    "ASSIGNERS",
    "ASSIGNER_NAMES",
    "ASSIGN_MODES",
    "PAPER_K",
    "AssignError",
    "AssignFn",
    "AssignInputs",
    "AssignSettings",
    "Assignment",
    "BatchAssignment",
    "DynamicState",
    "assign_batch",
    "default_k",
]
