"""Backbones (hyper-representations): (G, n, C, H, W) images → (G, n, features)."""

from bilevel_cli.models.conv4 import Conv4
from bilevel_cli.models.resnet12 import ResNet12
from bilevel_cli.models.resnet18 import ResNet18

__all__ = ["Conv4", "ResNet12", "ResNet18"]
