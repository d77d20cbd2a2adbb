"""From a checked config to the objects a run needs."""

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.errors import UserError
from bilevel_cli.tasks import HyperRepresentation, JointTraining, Task
from bilevel_cli.tasks.episodic import EpisodeProtocol


def build_data(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """The data set's tensors on `device`: uint8 image stores (classes, per_class, C, H, W) by split for the
    few-shot data sets, a labelled pool {"images", "labels"} for the others."""
    # Built partial and called here: instantiate would wrap the loader's UserError (a one-line message).
    load = instantiate(cfg.data, _partial_=True)
    return {key: tensor.to(device) for key, tensor in load().items()}


def build_task(cfg: DictConfig, data: dict[str, torch.Tensor]) -> Task:
    """The task of `cfg.task.name` on `data`, on the data's device."""
    device = next(iter(data.values())).device
    return BUILDERS[cfg.task.name](cfg, data).to(device)


def _needs(cfg: DictConfig, data: dict, keys: tuple[str, ...], kind: str) -> None:
    if not set(keys) <= set(data):
        raise UserError(f"task={cfg.task.name} needs a {kind} data set, but data={OmegaConf.select(cfg, 'data._target_')} "
                        f"gives {', '.join(data)}; pick another data= (see bilevel train --help)")


def _episodic(cfg: DictConfig, data: dict) -> tuple[EpisodeProtocol, torch.nn.Module, dict]:
    """What every few-shot task is built from: the episode protocol, the backbone and the inner optimizer."""
    _needs(cfg, data, ("train", "val", "test"), "few-shot (class-split)")
    ep, tr = cfg.task, cfg.trainer
    protocol = EpisodeProtocol(data, ep.ways, ep.shots, ep.queries, ep.meta_batch, seed=cfg.seed,
                               eval_seed=tr.eval_seed, eval_batch=tr.eval_batch, val_episodes=tr.val_episodes,
                               test_episodes=tr.test_episodes, T_candidates=list(tr.select_T))
    backbone = instantiate(cfg.backbone, in_channels=data["train"].shape[2])
    inner = dict(inner=cfg.inner.name, inner_lr=cfg.inner.lr, inner_options=OmegaConf.to_container(cfg.inner.options))
    return protocol, backbone, inner


def _hyper_representation(cfg: DictConfig, data: dict) -> Task:
    protocol, backbone, inner = _episodic(cfg, data)
    return HyperRepresentation(backbone, cfg.task.ways, cfg.hypergrad.T, method=cfg.hypergrad.method,
                               method_options=OmegaConf.to_container(cfg.hypergrad.options),
                               learn_lr=cfg.inner.learn_lr, protocol=protocol, **inner)


def _joint_training(cfg: DictConfig, data: dict) -> Task:
    protocol, backbone, inner = _episodic(cfg, data)
    with torch.no_grad():
        feature_dim = backbone(data["train"][:1, :1].float().cpu()).shape[-1]
    return JointTraining(backbone, cfg.task.ways, cfg.hypergrad.T, classes=data["train"].shape[0],
                         feature_dim=feature_dim, protocol=protocol, **inner)


BUILDERS = {"hyper_representation": _hyper_representation, "joint_training": _joint_training}
