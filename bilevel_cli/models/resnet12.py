"""The few-shot ResNet-12 of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019), without DropBlock.

Four residual blocks, each: 3 × [conv 3×3, BatchNorm, LeakyReLU 0.1] (no activation after the third
BatchNorm), plus a conv 1×1 + BatchNorm shortcut, then LeakyReLU and max-pool 2×2. Widths 64-160-320-640:
84×84 → 640×5×5 → global average pooling → 640 features; about 12.4M parameters.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.models.batchnorm import EpisodeBackbone, EpisodeBatchNorm2d

SLOPE = 0.1  # LeakyReLU slope of the reference implementations


class Block(nn.Module):
    def __init__(self, in_channels: int, channels: int, norm: str):
        super().__init__()
        widths = [in_channels, channels, channels, channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(EpisodeBatchNorm2d(channels, norm) for _ in range(3))
        self.shortcut = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.shortcut_norm = EpisodeBatchNorm2d(channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h))
            if i < 2:  # the third BatchNorm feeds the sum directly
                h = F.leaky_relu(h, SLOPE)
        h = F.leaky_relu(h + self.shortcut_norm(self.shortcut(x)), SLOPE)
        return F.max_pool2d(h, 2)


class ResNet12(EpisodeBackbone):
    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 160, 320, 640), norm: str = "episode"):
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*(Block(a, b, norm) for a, b in zip(widths, widths[1:])))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the reference implementations' initialization
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        return self.blocks(h).mean((2, 3))
