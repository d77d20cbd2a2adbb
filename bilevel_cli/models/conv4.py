"""The authors' four-layer convolutional hyper-representations (Franceschi et al. 2018, §5.2).

Omniglot:     4 × [conv 3×3, 64 filters, stride 2, BatchNorm, ReLU]            28×28 → 2·2·64 = 256 features
MiniImagenet: 4 × [conv 3×3, 32 filters, BatchNorm, ReLU, max-pool 2×2]       84×84 → 5·5·32 = 800 features
"""

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.models.batchnorm import EpisodeBackbone, EpisodeBatchNorm2d


class Conv4(EpisodeBackbone):
    def __init__(self, in_channels: int = 1, channels: int = 64, pool: bool = False, norm: str = "episode"):
        super().__init__()
        self.pool = pool
        widths = [in_channels] + [channels] * 4
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=1 if pool else 2, padding=1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(EpisodeBatchNorm2d(channels, norm) for _ in range(4))

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(h)))
            if self.pool:
                h = F.max_pool2d(h, 2)
        return h.flatten(1)  # the paper's features are the flattened maps, no global pooling
