"""Backbones (hyper-representations): (G, n, C, H, W) images → (G, n, features)."""

from bilevel_cli.models.conv4 import Conv4

__all__ = ["Conv4"]
