"""From a checked config to the objects a run needs."""

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.tasks import HyperRepresentation


def build_data(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """The data set's splits as uint8 image stores (classes, per_class, C, H, W) on `device`."""
    return {split: images.to(device) for split, images in instantiate(cfg.data).items()}


def build_task(cfg: DictConfig, in_channels: int) -> HyperRepresentation:
    backbone = instantiate(cfg.backbone, in_channels=in_channels)
    return HyperRepresentation(
        backbone, ways=cfg.task.ways, T=cfg.hypergrad.T, method=cfg.hypergrad.method,
        method_options=OmegaConf.to_container(cfg.hypergrad.options), inner=cfg.inner.name,
        inner_lr=cfg.inner.lr, learn_lr=cfg.inner.learn_lr, inner_options=OmegaConf.to_container(cfg.inner.options))
