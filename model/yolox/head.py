"""The decoupled YOLOX head: per level a 1x1 stem, then a classification and a regression branch.

The head decodes its outputs and, given targets, hands them to ``model.yolox.loss.yolox_loss``;
the assignment and loss live there as plain functions, not in this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.assign.dynamic import DynamicState
from model.distributed import World
from model.yolox.blocks import BaseConv, conv_type
from model.yolox.errors import YOLOXInputError
from model.yolox.head_settings import HeadSettings

STRIDES = (8, 16, 32)
_GRID_CACHE_LIMIT = 64  # multiscale training visits ~11 sizes x 3 levels; keep the cache bounded


class YOLOXHead(nn.Module):
    """Decoupled head over the three PAFPN levels (strides 8, 16, 32).

    ``settings`` (:class:`~model.yolox.head_settings.HeadSettings`, official by default) holds the
    initial score prior and the loss's settings; it is read on every loss call, so a new one can
    be set in place. Attributes the trainer switches: ``use_l1`` (add the L1 loss on raw
    regressions, the official last-15-epochs switch) and (issue 17) ``assign_stats`` (return the
    assignment counts under ``assign_stats`` in the loss dict). ``dynamic_state`` holds the
    ``dynamic`` assigner's threshold and beta (not in the state_dict, so official checkpoints
    still load strictly; the trainer saves it beside the weights).
    """

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        in_channels: Sequence[int] = (256, 512, 1024),
        strides: Sequence[int] = STRIDES,
        act: str = "silu",
        depthwise: bool = False,
        settings: HeadSettings | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.settings = HeadSettings() if settings is None else settings
        # Registration order fixes the state_dict order of the official checkpoints.
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        self.stems = nn.ModuleList()
        for c in in_channels:
            self._add_level(int(c * width), int(256 * width), act, depthwise)
        self.initialize_biases(self.settings.prior_prob)
        self.use_l1 = False
        self.assign_stats = False
        self.world = World()  # (set by the trainer when a trial runs on several processes)
        self.dynamic_state = DynamicState(interval=self.settings.loss.assign.dynamic_interval)
        # (level, H, W, dtype, device) -> (xy (H*W, 2) cell indices, (H*W,) stride); not state.
        self._grids: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _add_level(self, in_ch: int, hidden: int, act: str, depthwise: bool) -> None:
        """One level's stem, two 3x3 convs per branch and the three 1x1 prediction convs."""
        conv = conv_type(depthwise)

        def branch() -> nn.Sequential:
            return nn.Sequential(
                conv(hidden, hidden, 3, 1, act=act), conv(hidden, hidden, 3, 1, act=act)
            )

        self.stems.append(BaseConv(in_ch, hidden, 1, 1, act=act))
        self.cls_convs.append(branch())
        self.reg_convs.append(branch())
        self.cls_preds.append(nn.Conv2d(hidden, self.num_classes, 1))
        self.reg_preds.append(nn.Conv2d(hidden, 4, 1))
        self.obj_preds.append(nn.Conv2d(hidden, 1, 1))

    def initialize_biases(self, prior_prob: float) -> None:
        """Start objectness and class scores at ``prior_prob`` (bias = -log((1 - p) / p))."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        with torch.no_grad():
            for conv in (*self.cls_preds, *self.obj_preds):
                conv.bias.fill_(bias)

    def level_grid(
        self, level: int, h: int, w: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Cell indices ``(H*W, 2)`` as (x, y), row-major, and the stride ``(H*W,)``; cached."""
        key = (level, h, w, dtype, device)
        grid = self._grids.get(key)
        if grid is None:
            if len(self._grids) >= _GRID_CACHE_LIMIT:
                self._grids.clear()
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=dtype, device=device),
                torch.arange(w, dtype=dtype, device=device),
                indexing="ij",
            )
            xy = torch.stack((xs, ys), dim=-1).reshape(-1, 2)  # (H*W, 2)
            stride = torch.full((h * w,), float(self.strides[level]), dtype=dtype, device=device)
            grid = self._grids[key] = (xy, stride)
        return grid

    def forward(self, feats: Sequence[Tensor], targets: Tensor | None = None) -> Tensor | dict:
        """Head outputs for the PAFPN maps ``feats`` (finest first, (B, C_l, H_l, W_l)).

        Without ``targets``: ``(B, A, 5 + C)`` decoded (cx, cy, w, h in input pixels, objectness,
        class scores after sigmoid), A = sum of H_l * W_l, levels in stride order, row-major.
        With ``targets`` (B, M, 5) (class, cx, cy, w, h in input pixels; zero rows padding): the
        loss dict of ``yolox_loss``.
        """
        maps = []
        for k, x in enumerate(feats):
            x = self.stems[k](x)
            reg_feat = self.reg_convs[k](x)
            maps.append(
                torch.cat(
                    [
                        self.reg_preds[k](reg_feat),
                        self.obj_preds[k](reg_feat),
                        self.cls_preds[k](self.cls_convs[k](x)),
                    ],
                    dim=1,
                )  # (B, 5 + C, H_l, W_l)
            )
        # Decoded in fp32: under AMP exp() of a large fp16 regression overflows to inf.
        raw = torch.cat([m.flatten(2) for m in maps], dim=2).permute(0, 2, 1).float()  # (B, A, 5+C)
        grids = [
            self.level_grid(k, m.shape[2], m.shape[3], raw.dtype, raw.device)
            for k, m in enumerate(maps)
        ]
        xy = torch.cat([g[0] for g in grids])  # (A, 2)
        strides = torch.cat([g[1] for g in grids])  # (A,)
        s = strides[:, None]
        boxes = torch.cat([(raw[..., :2] + xy) * s, raw[..., 2:4].exp() * s], dim=-1)  # (B, A, 4)
        if targets is None:
            return torch.cat([boxes, raw[..., 4:].sigmoid()], dim=-1)
        return self._loss(raw, boxes, xy, strides, targets)

    def _loss(
        self, raw: Tensor, boxes: Tensor, xy: Tensor, strides: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        if targets.dim() != 3 or targets.shape[-1] != 5 or targets.shape[0] != raw.shape[0]:
            raise YOLOXInputError(
                f"targets must be (B={raw.shape[0]}, max_objects, 5) rows of "
                f"(class, cx, cy, w, h); got shape {tuple(targets.shape)}"
            )
        # Imported here so that the network builds and runs inference without the loss module.
        from model.yolox.loss import yolox_loss

        outputs = torch.cat([boxes, raw[..., 4:]], dim=-1)  # (B, A, 5+C): boxes, logits
        return yolox_loss(
            outputs,
            raw[..., :4],  # (B, A, 4) raw regressions for the L1 term
            xy[:, 0],
            xy[:, 1],
            strides,
            targets.to(device=raw.device, dtype=raw.dtype),
            num_classes=self.num_classes,
            settings=self.settings.loss,
            use_l1=self.use_l1,
            dynamic_state=self.dynamic_state,
            assign_stats=self.assign_stats,
            world=self.world,
        )
