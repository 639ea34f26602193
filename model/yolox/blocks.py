"""Building blocks of the YOLOX network: conv-BN-act, depthwise pairs, CSP layers, SPP, Focus.

Attribute names (``conv``, ``bn``, ``dconv``, ``pconv``, ``conv1..3``, ``m``) follow the official
implementation so that its checkpoints load strictly. Every BatchNorm uses the official training
settings (eps 1e-3, momentum 0.03), which YOLOX sets after construction; we set them here directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.yolox.errors import YOLOXInputError

BN_EPS = 1e-3
BN_MOMENTUM = 0.03

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """The activation module for ``name`` (silu, relu, lrelu); an unknown name is a
    YOLOXInputError (a ValueError)."""
    if name not in _ACTIVATIONS:
        raise YOLOXInputError(
            f"unknown activation {name!r}; use one of {', '.join(map(repr, _ACTIVATIONS))}"
        )
    if name == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    return _ACTIVATIONS[name](inplace=True)


class BaseConv(nn.Module):
    """Conv2d (no bias, "same" padding) -> BatchNorm -> activation.

    (B, Cin, H, W) -> (B, Cout, H/stride, W/stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ksize: int,
        stride: int = 1,
        groups: int = 1,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=ksize,
            stride=stride,
            padding=(ksize - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise ``ksize`` conv followed by a pointwise 1x1 conv, each with BN and activation."""

    def __init__(
        self, in_channels: int, out_channels: int, ksize: int, stride: int = 1, act: str = "silu"
    ) -> None:
        super().__init__()
        self.dconv = BaseConv(in_channels, in_channels, ksize, stride, groups=in_channels, act=act)
        self.pconv = BaseConv(in_channels, out_channels, 1, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pconv(self.dconv(x))


def conv_type(depthwise: bool) -> type[BaseConv] | type[DWConv]:
    """The 3x3 conv used where YOLOX lets ``depthwise`` choose (nano uses DWConv)."""
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    """1x1 conv then 3x3 conv, plus the input when ``shortcut`` and the channel counts agree."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        expansion: float = 0.5,
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv2 = conv_type(depthwise)(hidden, out_channels, 3, 1, act=act)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Cross-stage-partial layer (YOLOv5's C3): two 1x1 branches, ``n`` bottlenecks on one, fused.

    (B, Cin, H, W) -> (B, Cout, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        shortcut: bool = True,
        expansion: float = 0.5,
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv2 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1, 1, act=act)
        self.m = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, 1.0, depthwise, act=act) for _ in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: halve channels, concat max-pools 5/9/13 (stride 1), fuse."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: tuple[int, ...] = (5, 9, 13),
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))


class Focus(nn.Module):
    """Space-to-depth by 2 then a conv: (B, C, H, W) -> (B, Cout, H/2, W/2).

    The four pixel phases are stacked in the official order (top-left, bottom-left, top-right,
    bottom-right) because the stem weights of the COCO checkpoints depend on it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ksize: int = 1,
        stride: int = 1,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, ksize, stride, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat(
            (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1
        )  # (B, 4C, H/2, W/2)
        return self.conv(x)
