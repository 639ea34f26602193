"""CSPDarknet, the YOLOX backbone: Focus stem, then four stride-2 stages dark2..dark5."""

from __future__ import annotations

from torch import Tensor, nn

from model.yolox.blocks import CSPLayer, Focus, SPPBottleneck, conv_type


class CSPDarknet(nn.Module):
    """CSPDarknet scaled by ``depth`` (bottlenecks per CSP layer) and ``width`` (channels).

    Input (B, 3, H, W) with H, W multiples of 32. Output: a dict of the stages named in
    ``out_features``; dark3 is (B, 256w, H/8, W/8), dark4 (B, 512w, H/16, W/16), dark5
    (B, 1024w, H/32, W/32), with ``w = width``.
    """

    def __init__(
        self,
        depth: float,
        width: float,
        out_features: tuple[str, ...] = ("dark3", "dark4", "dark5"),
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.out_features = out_features
        conv = conv_type(depthwise)
        c = int(width * 64)  # stem channels; stage k has c * 2**(k-1)
        n = max(round(depth * 3), 1)  # bottlenecks in dark2 and dark5; dark3/dark4 have 3n

        self.stem = Focus(3, c, ksize=3, act=act)
        self.dark2 = nn.Sequential(
            conv(c, c * 2, 3, 2, act=act),
            CSPLayer(c * 2, c * 2, n=n, depthwise=depthwise, act=act),
        )
        self.dark3 = nn.Sequential(
            conv(c * 2, c * 4, 3, 2, act=act),
            CSPLayer(c * 4, c * 4, n=n * 3, depthwise=depthwise, act=act),
        )
        self.dark4 = nn.Sequential(
            conv(c * 4, c * 8, 3, 2, act=act),
            CSPLayer(c * 8, c * 8, n=n * 3, depthwise=depthwise, act=act),
        )
        self.dark5 = nn.Sequential(
            conv(c * 8, c * 16, 3, 2, act=act),
            SPPBottleneck(c * 16, c * 16, act=act),
            CSPLayer(c * 16, c * 16, n=n, shortcut=False, depthwise=depthwise, act=act),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        for name in ("stem", "dark2", "dark3", "dark4", "dark5"):
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
