"""From a checked config to the objects a run needs."""

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.errors import UserError
from bilevel_cli.tasks import HyperRepresentation, JointTraining, Task
from bilevel_cli.tasks.hyper_cleaning import HyperCleaning
from bilevel_cli.tasks.linear_representation import LinearRepresentation
from bilevel_cli.tasks.episodic import EpisodeProtocol
from bilevel_cli.tasks.realtime_ho import RealTimeHO


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


KINDS = {"few-shot": ("train", "val", "test"), "labelled": ("images", "labels")}
CHOICES = {"few-shot": "data=glyphs, omniglot or miniimagenet", "labelled": "data=digits or mnist"}


def _needs(cfg: DictConfig, data: dict, kind: str) -> None:
    if not set(KINDS[kind]) <= set(data):
        raise UserError(f"task={cfg.task.name} needs a {kind} data set ({CHOICES[kind]}), but "
                        f"{OmegaConf.select(cfg, 'data._target_')} gives {', '.join(data)}")


def _episodic(cfg: DictConfig, data: dict) -> tuple[EpisodeProtocol, torch.nn.Module, dict]:
    """What every few-shot task is built from: the episode protocol, the backbone and the inner optimizer."""
    _needs(cfg, data, "few-shot")
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


def _hyper_cleaning(cfg: DictConfig, data: dict) -> Task:
    _needs(cfg, data, "labelled")
    t = cfg.task
    return HyperCleaning(data["images"], data["labels"], t.train, t.val, t.test, t.corrupted, cfg.hypergrad.T,
                         seed=cfg.seed, method=cfg.hypergrad.method,
                         method_options=OmegaConf.to_container(cfg.hypergrad.options), inner=cfg.inner.name,
                         inner_lr=cfg.inner.lr, inner_options=OmegaConf.to_container(cfg.inner.options),
                         parametrization=t.parametrization, threshold=t.threshold)


def _realtime_ho(cfg: DictConfig, data: dict) -> Task:
    _needs(cfg, data, "labelled")
    if cfg.hypergrad.method != "forward":
        raise UserError(f"task=realtime_ho carries the tangents dw/dλ across hyper-iterations, which only forward "
                        f"mode does; use hypergrad=forward (got hypergrad.method={cfg.hypergrad.method})")
    t = cfg.task
    return RealTimeHO(data["images"], data["labels"], splits=tuple(t.splits), hidden=tuple(t.hidden), batch=t.batch,
                      val_batch=t.val_batch, delta=cfg.hypergrad.T, lr=t.lr, momentum=t.momentum, l2=t.l2,
                      seed=cfg.seed)


def _linear_representation(cfg: DictConfig, data: dict) -> Task:
    _needs(cfg, data, "few-shot")
    t = cfg.task
    try:
        return LinearRepresentation(
            data["train"], cfg.hypergrad.T, classes=t.classes, train_per_class=t.train_per_class,
            val_per_class=t.val_per_class, test_per_class=t.test_per_class, dim=t.dim, loss=t.loss, exact=t.exact,
            ridge=t.ridge, centre=t.centre, init_std=t.init_std, method=cfg.hypergrad.method,
            method_options=OmegaConf.to_container(cfg.hypergrad.options), inner=cfg.inner.name, inner_lr=cfg.inner.lr,
            learn_lr=cfg.inner.learn_lr, inner_options=OmegaConf.to_container(cfg.inner.options), seed=t.seed,
            init_seed=cfg.seed)
    except ValueError as error:  # the task's checks of its sizes and loss, as one line
        raise UserError(f"task=linear_representation: {error}") from None


BUILDERS = {"hyper_representation": _hyper_representation, "joint_training": _joint_training,
            "hyper_cleaning": _hyper_cleaning, "realtime_ho": _realtime_ho,
            "linear_representation": _linear_representation}
