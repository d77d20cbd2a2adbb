"""BatchNorm whose statistics are those of the images fed, per episode and per segment.

The authors normalize each episode's support set and query set with their own batch statistics,
at training and at test time alike (BatchNorm "in training mode" throughout). When a meta-batch of
G episodes runs through the backbone as one tensor, this module computes the statistics separately
for every (episode, segment) pair, segments being e.g. (N·K support images, N·Q query images).
`running` mode is the usual alternative: statistics of the whole batch while training, running
averages at evaluation.

Layout: the batch is image-major, row i·G + g holding image i of episode g. A segment of m images is
then a contiguous block that views as (m, G·C, H, W), so PyTorch's fused batch_norm kernel computes
the per-(episode, channel) statistics directly: about twice as fast as var_mean and elementwise ops.

The norm layers are called with one tensor (torchvision's blocks call them so), hence the layout
(G, segments) is not an argument: `EpisodeBackbone.forward` sets it on every norm of the backbone
for the duration of the call.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("episode", "running")


class EpisodeBatchNorm2d(nn.Module):
    def __init__(self, channels: int, mode: str = "episode", eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"unknown norm {mode!r}; choose one of {', '.join(NORMS)}")
        self.mode, self.eps, self.momentum = mode, eps, momentum
        self.layout: tuple[int, tuple[int, ...]] | None = None  # (groups, segments), set by episode_layout
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if mode == "running":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (n·groups, C, H, W) image-major; each group's n images split into consecutive `segments`."""
        if self.mode == "running":
            return F.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum, self.eps)
        if self.layout is None:
            # Statistics of the whole batch would silently mix episodes: refuse instead.
            raise RuntimeError("EpisodeBatchNorm2d(mode='episode') runs only inside episode_layout(...)")
        groups, segments = self.layout
        weight, bias = self.weight.repeat(groups), self.bias.repeat(groups)
        parts = [F.batch_norm(p.reshape(-1, groups * p.shape[1], *p.shape[2:]), None, None, weight, bias,
                              True, 0.0, self.eps).view_as(p)
                 for p in h.split([m * groups for m in segments])]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@contextmanager
def episode_layout(module: nn.Module, groups: int, segments: tuple[int, ...]):
    """Every EpisodeBatchNorm2d inside `module` normalizes per (group, segment) within the block."""
    norms = [m for m in module.modules() if isinstance(m, EpisodeBatchNorm2d)]
    for norm in norms:
        norm.layout = (groups, tuple(segments))
    try:
        yield
    finally:
        for norm in norms:
            norm.layout = None


class EpisodeBackbone(nn.Module):
    """(G, n, C, H, W) images of G groups (episodes) → (G, n, features). A subclass defines `embed`,
    which maps the image-major batch (n·G, C, H, W) to (n·G, features)."""

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, segments: tuple[int, ...] | None = None) -> torch.Tensor:
        """`segments` splits each group's n images into parts normalized separately (default: one part)."""
        groups, n = x.shape[:2]
        h = x.transpose(0, 1).flatten(0, 1)  # image-major, the layout EpisodeBatchNorm2d wants
        with episode_layout(self, groups, segments or (n,)):
            h = self.embed(h)
        return h.reshape(n, groups, -1).transpose(0, 1)
