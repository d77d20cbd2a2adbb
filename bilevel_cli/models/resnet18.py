"""torchvision's ResNet-18 for small images, as in few-shot and CIFAR work: the first conv is 3×3 with
stride 1 instead of 7×7 with stride 2, and there is no max-pool, so 32×32 or 84×84 inputs are not
shrunk fourfold before the first block; no classifier: 512 features after global average pooling.
Its BatchNorm layers are the project's EpisodeBatchNorm2d.
"""

from functools import partial

import torch
from torch import nn

from bilevel_cli.models.batchnorm import EpisodeBackbone, EpisodeBatchNorm2d


class ResNet18(EpisodeBackbone):
    def __init__(self, in_channels: int = 3, norm: str = "episode"):
        super().__init__()
        # Imported here: torchvision takes seconds to import, and every `bilevel` command that does not build
        # this backbone would pay for it.
        from torchvision.models import resnet18
        self.net = resnet18(weights=None, norm_layer=partial(EpisodeBatchNorm2d, mode=norm))
        self.net.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        # torchvision initializes its convs so; the replaced first conv should not differ.
        nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.net.maxpool = nn.Identity()
        self.net.fc = nn.Identity()

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
