"""The network package's errors: one base, each message naming the value and the fix."""

from __future__ import annotations


class YOLOXError(Exception):
    """Base of every error raised by ``model.yolox`` (building, running, loading weights)."""


class YOLOXInputError(YOLOXError, ValueError):
    """A bad argument or tensor shape given to ``build_yolox``, the network or ``yolox_loss``."""
