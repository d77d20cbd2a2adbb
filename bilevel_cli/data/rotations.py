"""Quarter-turn rotations as extra classes, the standard way to enlarge Omniglot-style character sets."""

import torch


def with_rotations(images: torch.Tensor) -> torch.Tensor:
    """(classes, per_class, C, H, W) square images -> (4·classes, per_class, C, H, W): all classes at 0°, then all
    at 90°, 180° and 270°."""
    return torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
