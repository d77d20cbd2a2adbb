"""From a checked config to the objects a run needs."""

import importlib
import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.errors import UserError
from bilevel_cli.tasks import HyperRepresentation, JointTraining, Task
from bilevel_cli.tasks.hyper_cleaning import HyperCleaning
from bilevel_cli.tasks.linear_representation import LinearRepresentation
from bilevel_cli.tasks.episodic import EpisodeProtocol
from bilevel_cli.tasks.realtime_ho import RealTimeHO


# The config nodes that name something to instantiate, and where in the project or in torch it may come from.
# A config can arrive from elsewhere (a checkpoint's, an experiment file): any other `_target_` could run code.
TARGETS = {"data": ("bilevel_cli.data.",), "backbone": ("bilevel_cli.models.", "torch.nn."),
           "outer.optimizer": ("torch.optim.", "bilevel_cli.")}
# For the messages: a good `_target_` of each node, and the config group option that sets it.
EXAMPLES = {"data": ("bilevel_cli.data.glyphs.load_glyphs", "data=glyphs"),
            "backbone": ("bilevel_cli.models.Conv4", "backbone=conv4"),
            "outer.optimizer": ("torch.optim.Adam", "outer=adam")}


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` of the config sits at a node of TARGETS and names an existing callable of the project, or a
    class of torch, under that node's prefixes: nothing else is ever imported or called."""
    found = dict(_targets(OmegaConf.to_container(cfg, resolve=True)))
    for key, target in found.items():
        if key not in TARGETS:
            raise UserError(f"{key}._target_ {target!r} is not allowed: only {', '.join(TARGETS)} may name something "
                            "to instantiate; remove that override or key")
        _check_target(key, target)
    for key in ("data", "outer.optimizer"):
        if key not in found:
            raise UserError(f"{key} names nothing to instantiate (no {key}._target_); choose one of its config "
                            f"group's options (e.g. {EXAMPLES[key][1]})")


def _targets(node, path: str = ""):
    """(dotted path of the node, its _target_) for every node of a plain config tree that has one."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node["_target_"]
        for key, child in node.items():
            yield from _targets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _targets(child, f"{path}.{i}")


def _check_target(key: str, target) -> object:
    """The callable `target` names, once it is known to be allowed at `key`; else a UserError."""
    prefixes = TARGETS[key]
    if not isinstance(target, str) or not target.startswith(prefixes):
        raise UserError(f"{key}._target_ {target!r} is not allowed: only {' and '.join(p + '*' for p in prefixes)} "
                        "may be instantiated there")
    found = _locate(target)  # imports only now that the prefix is known to be this project's or torch's
    if not callable(found) or (target.startswith("torch.") and not inspect.isclass(found)):
        kind = "class" if target.startswith("torch.") else "function or class"
        raise UserError(f"{key}._target_ {target!r} names no {kind}; check its spelling (e.g. {EXAMPLES[key][0]})")
    return found


def _locate(dotted: str):
    """The object at a dotted path (module path, then attributes), or None."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            found = getattr(found, name, None)
        return found
    return None


def make(cfg: DictConfig, key: str, *args, **kwargs):
    """What the config node `key` names, called with its values and these arguments: the one way this project
    instantiates from a config."""
    node = OmegaConf.select(cfg, key)
    if not isinstance(node, DictConfig):  # e.g. an experiment without a backbone, run with a few-shot task
        raise UserError(f"task={cfg.task.name} needs a {key}, but the config sets none; choose one "
                        f"(e.g. {EXAMPLES[key][1]})")
    target = _check_target(key, node.get("_target_"))
    values = {name: value for name, value in node.items() if not name.startswith("_")}
    try:
        inspect.signature(target).bind(*args, **values, **kwargs)
    except TypeError as error:  # a key the callee does not take, or one it needs missing
        raise UserError(f"{key} does not fit {node._target_}: {error}; remove or rename that key") from None
    # Partial, then called here: instantiate would wrap the callee's UserError (a one-line message) in its own
    # multi-line one. Not recursive: a nested `_target_` is never instantiated.
    return instantiate(node, _partial_=True, _recursive_=False)(*args, **kwargs)


def build_data(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """The data set's tensors on `device`: uint8 image stores (classes, per_class, C, H, W) by split for the
    few-shot data sets, a labelled pool {"images", "labels"} for the others."""
    return {key: tensor.to(device) for key, tensor in make(cfg, "data").items()}


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
    backbone = make(cfg, "backbone", in_channels=data["train"].shape[2])
    inner = dict(inner=cfg.inner.name, inner_lr=cfg.inner.lr, inner_options=OmegaConf.to_container(cfg.inner.options),
                 precision=cfg.trainer.precision)
    return protocol, backbone, inner


def _hyper_representation(cfg: DictConfig, data: dict) -> Task:
    protocol, backbone, inner = _episodic(cfg, data)
    return HyperRepresentation(backbone, cfg.task.ways, cfg.hypergrad.T, method=cfg.hypergrad.method,
                               method_options=OmegaConf.to_container(cfg.hypergrad.options),
                               learn_lr=cfg.inner.learn_lr, curvature_scaled_rate=_curvature_scaled_rate(cfg),
                               protocol=protocol, **inner)


def _curvature_scaled_rate(cfg: DictConfig) -> bool:
    # Checkpoints written before the option existed were trained at a fixed rate.
    return OmegaConf.select(cfg, "task.curvature_scaled_rate", default=False)


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


# The tasks built on a backbone (`_episodic`): trainer.precision applies to it.
BACKBONE_TASKS = ("hyper_representation", "joint_training")
BUILDERS = {"hyper_representation": _hyper_representation, "joint_training": _joint_training,
            "hyper_cleaning": _hyper_cleaning, "realtime_ho": _realtime_ho,
            "linear_representation": _linear_representation}
