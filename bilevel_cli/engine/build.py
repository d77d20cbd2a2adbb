"""From a checked config to the objects a run needs."""

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bilevel_cli.tasks import HyperRepresentation, JointTraining


def build_data(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """The data set's splits as uint8 image stores (classes, per_class, C, H, W) on `device`."""
    # Built partial and called here: instantiate would wrap the loader's UserError (a one-line message).
    load = instantiate(cfg.data, _partial_=True)
    return {split: images.to(device) for split, images in load().items()}


def build_task(cfg: DictConfig, train_images: torch.Tensor) -> nn.Module:
    """The task of `cfg.task.name` around the configured backbone; `train_images` give its input channels
    (and, for joint training, the classes of its classifier)."""
    backbone = instantiate(cfg.backbone, in_channels=train_images.shape[2])
    inner = dict(inner=cfg.inner.name, inner_lr=cfg.inner.lr, inner_options=OmegaConf.to_container(cfg.inner.options))
    if cfg.task.name == "joint_training":
        with torch.no_grad():
            feature_dim = backbone(train_images[:1, :1].float().cpu()).shape[-1]
        return JointTraining(backbone, cfg.task.ways, cfg.hypergrad.T, classes=train_images.shape[0],
                             feature_dim=feature_dim, **inner)
    return HyperRepresentation(backbone, cfg.task.ways, cfg.hypergrad.T, method=cfg.hypergrad.method,
                               method_options=OmegaConf.to_container(cfg.hypergrad.options),
                               learn_lr=cfg.inner.learn_lr, **inner)
