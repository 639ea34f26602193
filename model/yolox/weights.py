"""Pretrained weights: the official COCO checkpoints and backbone artifacts.

Official checkpoints are ``yolox_<size>.pth``, a dict whose ``model`` entry is the state_dict of
the whole network with the same key names as ours. They are read from an explicit path or from the
torch hub cache (``torch.hub.get_dir()/checkpoints``), downloaded there once when allowed.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import torch
from torch import Tensor, nn

from model.yolox.build import SIZES

COCO_URL = (
    "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_{size}.pth"
)
COCO_CLASSES = 80
# The only layers whose shape depends on the number of classes; skipped when it is not 80.
CLASS_LAYER_PREFIX = "head.cls_preds."


class WeightsUnavailableError(RuntimeError):
    """A checkpoint is neither on disk nor downloadable; the message says where to put it."""


@dataclass
class LoadReport:
    """What a weight load did. Keys are relative to the module that was loaded into."""

    loaded: list[str] = field(default_factory=list)  # copied from the checkpoint
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, left out on purpose
    missing: list[str] = field(default_factory=list)  # in the module, absent from the checkpoint
    source: str = ""

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.skipped)
        return (
            f"loaded {len(self.loaded)}/{total} tensors from {self.source} "
            f"(skipped {len(self.skipped)}, missing {len(self.missing)})"
        )


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"unknown YOLOX size {size!r}; use one of {', '.join(map(repr, SIZES))}")
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


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state_dict of an official checkpoint (``{"model": state_dict, ...}``) or a bare one."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a YOLOX checkpoint: expected a dict with a 'model' state_dict "
            "(or a state_dict itself)"
        )
    return state


def load_state_into(
    module: nn.Module, state: dict[str, Tensor], *, skip_prefixes: tuple[str, ...] = (), source: str
) -> LoadReport:
    """Copy ``state`` into ``module`` by name, skipping keys that start with ``skip_prefixes``.

    Keys unknown to ``module`` and shape mismatches are errors naming the key (the checkpoint is
    for another architecture); keys of ``module`` absent from ``state`` are reported as missing.
    """
    own = module.state_dict()
    report = LoadReport(source=source)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise ValueError(
            f"{source}: {len(unexpected)} key(s) not in the {type(module).__name__} being loaded "
            f"({shown}); is it a checkpoint of this architecture?"
        )
    selected: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(skip_prefixes):
            report.skipped.append(key)
            continue
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: shape mismatch at {key}: checkpoint {tuple(value.shape)} vs model "
                f"{tuple(own[key].shape)}; the checkpoint is for a different size or class count"
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
    """Load the official COCO weights of ``size`` into ``net`` (a YOLOX of that size).

    Every tensor is loaded, except the class-prediction layers when ``net`` does not have 80
    classes (they keep their prior-initialised values). Raises WeightsUnavailableError when the
    file is absent and cannot be downloaded.
    """
    file = resolve_coco_checkpoint(size, path, download=download, progress=progress)
    skip = () if net.head.num_classes == COCO_CLASSES else (CLASS_LAYER_PREFIX,)
    return load_state_into(net, read_checkpoint(file), skip_prefixes=skip, source=str(file))


def load_backbone_state(
    net: nn.Module, state: dict[str, Tensor], *, source: str = "backbone state"
) -> LoadReport:
    """Load a CSPDarknet state_dict (keys like ``dark2.0.conv.weight``) into
    ``net.backbone.backbone``; the report's keys are relative to it too.
    """
    if state and all(k.startswith("backbone.backbone.") for k in state):
        raise ValueError(
            f"{source}: keys start with 'backbone.backbone.' (a whole-network state_dict); "
            "pass keys relative to CSPDarknet, e.g. 'stem.conv.conv.weight'"
        )
    return load_state_into(net.backbone.backbone, state, source=source)
