"""Pretrained weights: the official COCO checkpoints, our own detectors, backbone artifacts.

Official checkpoints are ``yolox_<size>.pth``, a dict whose ``model`` entry is the state_dict of
the whole network with the same key names as ours. They are read from an explicit path or from the
torch hub cache (``torch.hub.get_dir()/checkpoints``), downloaded there once when allowed. An
explicit path may also be a training checkpoint of ours (``last.pt``/``best.pt``), so a trial can
start from a detector already trained on the user's classes. Files are always read with
``weights_only=True``: a file holding pickled Python objects is refused, never executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import torch
from torch import Tensor, nn

from model.checkpoint import NotWeightsOnlyError, load_weights_only
from model.yolox.build import SIZES
from model.yolox.errors import YOLOXError, YOLOXInputError

COCO_URL = (
    "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_{size}.pth"
)
COCO_CLASSES = 80
# The only layers whose shape depends on the number of classes: loaded when their shapes fit the
# net (an 80-class net from COCO, a 1-class net from a 1-class detector), else skipped.
CLASS_LAYER_PREFIX = "head.cls_preds."


class WeightsUnavailableError(YOLOXError, RuntimeError):
    """A checkpoint is neither on disk nor downloadable; the message says where to put it."""


class WeightsError(YOLOXError, ValueError):
    """A weights file cannot be used: not a weights-only checkpoint, not a YOLOX state_dict, or
    one of another architecture/size. The message names the file and the fix."""


@dataclass
class LoadReport:
    """What a weight load did. Keys are relative to the module that was loaded into."""

    loaded: list[str] = field(default_factory=list)  # copied from the checkpoint
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, left out on purpose
    missing: list[str] = field(default_factory=list)  # in the module, absent from the checkpoint
    source: str = ""
    why: dict[str, str] = field(default_factory=dict)  # skipped key -> reason
    entry: str = ""  # which weights of the file: "model", "ema" (a model.trainer checkpoint), ""

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.skipped)
        text = (
            f"loaded {len(self.loaded)}/{total} tensors from {self.source}"
            f"{' (its EMA weights)' if self.entry == 'ema' else ''} "
            f"(skipped {len(self.skipped)}, missing {len(self.missing)})"
        )
        why = [f"{k} ({self.why[k]})" for k in self.skipped if k in self.why]
        return text + (f"; skipped, the net keeps its own: {', '.join(why)}" if why else "")


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise YOLOXInputError(
            f"unknown YOLOX size {size!r}; use one of {', '.join(map(repr, SIZES))}"
        )
    return size


def coco_url(size: str) -> str:
    """Download address of the official COCO checkpoint of ``size``."""
    return COCO_URL.format(size=_check_size(size))


def coco_cache_path(size: str) -> Path:
    """Where the hub cache keeps (or would keep) ``yolox_<size>.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"yolox_{_check_size(size)}.pth"


def coco_weights_available(size: str, path: str | Path | None = None) -> bool:
    """Whether the COCO checkpoint is on disk (``path``, else the hub cache). No network."""
    target = Path(path) if path else coco_cache_path(size)
    return target.is_file()


def _download(url: str, dst: Path, progress: bool) -> None:
    """Fetch ``url`` into ``dst`` (torch writes a temporary file and renames it: atomic)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=progress)


def resolve_coco_checkpoint(
    size: str, path: str | Path | None = None, *, download: bool = True, progress: bool = True
) -> Path:
    """The local file of the COCO checkpoint, downloading into the hub cache once when allowed.

    An explicit ``path`` must exist (a typo should not trigger a download elsewhere).
    """
    url = coco_url(size)
    if path:
        p = Path(path)
        if not p.is_file():
            raise WeightsUnavailableError(
                f"COCO checkpoint {p} does not exist; download {url} and save it there "
                "(or leave the path empty to use the torch hub cache)"
            )
        return p
    dst = coco_cache_path(size)
    if dst.is_file():
        return dst
    if not download:
        raise WeightsUnavailableError(
            f"COCO checkpoint for YOLOX-{size} is not in the hub cache and downloading is off; "
            f"download {url} and place it at {dst}"
        )
    try:
        _download(url, dst, progress)
    except (OSError, HTTPException) as e:
        raise WeightsUnavailableError(
            f"could not download the COCO checkpoint for YOLOX-{size} ({e}); without internet, "
            f"fetch {url} elsewhere and place it at {dst}"
        ) from e
    return dst


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """(state_dict, entry) of a YOLOX weights file, read with ``weights_only=True``.

    Accepts an official checkpoint (``{"model": state_dict, ...}``, entry "model"), a bare
    state_dict (entry ""), and our training checkpoints (``model/checkpoint.py`` format, keys
    "model" and "ema"): from those the EMA weights (entry "ema") when the run kept them, since
    they are what training evaluated and selected ``best.pt`` by; else "model".
    """
    path = Path(path)
    try:
        ckpt = load_weights_only(path)
    except (NotWeightsOnlyError, OSError) as e:
        raise WeightsError(
            f"{path} is not a weights-only checkpoint ({e}); pass an official yolox_<size>.pth "
            "or a last.pt/best.pt written by model.trainer (pickled Python objects are never "
            "loaded)"
        ) from e
    state: object = None
    entry = ""
    if isinstance(ckpt, dict):
        ema = ckpt.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
            state, entry = ema["module"], "ema"
        elif "model" in ckpt:
            state, entry = ckpt["model"], "model"
        else:
            state = ckpt
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(
            f"{path} is not a YOLOX checkpoint: expected a dict with a 'model' state_dict "
            "(or a state_dict itself)"
        )
    return state, entry


def load_state_into(
    module: nn.Module,
    state: dict[str, Tensor],
    *,
    skip_prefixes: tuple[str, ...] = (),
    fit_prefixes: tuple[str, ...] = (),
    source: str,
) -> LoadReport:
    """Copy ``state`` into ``module`` by name, skipping keys that start with ``skip_prefixes``.

    Keys starting with ``fit_prefixes`` load when their shape fits and are skipped (with the
    reason in ``report.why``) when it does not. Other shape mismatches and keys unknown to
    ``module`` are errors naming the key (the checkpoint is for another architecture); keys of
    ``module`` absent from ``state`` are reported as missing.
    """
    own = module.state_dict()
    report = LoadReport(source=source)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise WeightsError(
            f"{source}: {len(unexpected)} key(s) not in the {type(module).__name__} being loaded "
            f"({shown}); is it a checkpoint of this size and architecture?"
        )
    selected: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(skip_prefixes):
            report.skipped.append(key)
            continue
        if value.shape != own[key].shape:
            file_shape, net_shape = tuple(value.shape), tuple(own[key].shape)
            if key.startswith(fit_prefixes):
                report.skipped.append(key)
                report.why[key] = f"shape mismatch: file {file_shape} vs net {net_shape}"
                continue
            raise WeightsError(
                f"{source}: shape mismatch at {key}: checkpoint {file_shape} vs model "
                f"{net_shape}; the checkpoint is for a different size (use one of this size)"
            )
        selected[key] = value
    module.load_state_dict(selected, strict=False)
    report.loaded = list(selected)
    report.missing = [k for k in own if k not in state]
    return report


def load_coco_weights(
    net: nn.Module,
    size: str,
    path: str | Path | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> LoadReport:
    """Load detector weights of ``size`` into ``net``: the official COCO checkpoint, or the
    file at ``path`` (official, or any YOLOX checkpoint of this size: see :func:`read_weights`).

    Every tensor is loaded, except the class-prediction layers when their shapes differ from
    ``net``'s (another number of classes: they keep their prior-initialised values and are
    listed in the report's ``skipped`` and ``why``). Raises WeightsUnavailableError when the file
    is absent and cannot be downloaded, WeightsError when it cannot be used.
    """
    file = resolve_coco_checkpoint(size, path, download=download, progress=progress)
    state, entry = read_weights(file)
    report = load_state_into(net, state, fit_prefixes=(CLASS_LAYER_PREFIX,), source=str(file))
    report.entry = entry
    return report


def load_backbone_state(
    net: nn.Module, state: dict[str, Tensor], *, source: str = "backbone state"
) -> LoadReport:
    """Load a CSPDarknet state_dict (keys like ``dark2.0.conv.weight``) into
    ``net.backbone.backbone``; the report's keys are relative to it too.
    """
    if state and all(k.startswith("backbone.backbone.") for k in state):
        raise WeightsError(
            f"{source}: keys start with 'backbone.backbone.' (a whole-network state_dict); "
            "pass keys relative to CSPDarknet, e.g. 'stem.conv.conv.weight'"
        )
    return load_state_into(net.backbone.backbone, state, source=source)
