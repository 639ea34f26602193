"""YOLOPAFPN, the YOLOX neck: CSPDarknet plus a top-down FPN and a bottom-up PAN path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.yolox.blocks import BaseConv, CSPLayer, conv_type
from model.yolox.darknet import CSPDarknet

# Channels of dark3, dark4, dark5 at width 1.0.
IN_CHANNELS = (256, 512, 1024)


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class YOLOPAFPN(nn.Module):
    """Backbone + PAFPN. Input (B, 3, H, W); output the three fused maps, finest first:

    (B, 256w, H/8, W/8), (B, 512w, H/16, W/16), (B, 1024w, H/32, W/32), ``w = width``.
    """

    def __init__(
        self,
        depth: float = 1.0,
        width: float = 1.0,
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.backbone = CSPDarknet(depth, width, depthwise=depthwise, act=act)
        self.in_features = ("dark3", "dark4", "dark5")
        conv = conv_type(depthwise)
        c3, c4, c5 = (int(c * width) for c in IN_CHANNELS)
        n = round(3 * depth)

        # Top-down: dark5 -> 1/16 -> 1/8.
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1, act=act)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise=depthwise, act=act)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1, act=act)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise=depthwise, act=act)
        # Bottom-up: 1/8 -> 1/16 -> 1/32.
        self.bu_conv2 = conv(c3, c3, 3, 2, act=act)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise=depthwise, act=act)
        self.bu_conv1 = conv(c4, c4, 3, 2, act=act)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise=depthwise, act=act)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.backbone(images)
        x3, x4, x5 = (feats[f] for f in self.in_features)  # strides 8, 16, 32

        lat5 = self.lateral_conv0(x5)  # (B, c4, H/32, W/32)
        p4 = self.C3_p4(torch.cat([_up2(lat5), x4], 1))  # (B, c4, H/16, W/16)
        lat4 = self.reduce_conv1(p4)  # (B, c3, H/16, W/16)
        out3 = self.C3_p3(torch.cat([_up2(lat4), x3], 1))  # (B, c3, H/8, W/8)

        out4 = self.C3_n3(torch.cat([self.bu_conv2(out3), lat4], 1))  # (B, c4, H/16, W/16)
        out5 = self.C3_n4(torch.cat([self.bu_conv1(out4), lat5], 1))  # (B, c5, H/32, W/32)
        return out3, out4, out5
