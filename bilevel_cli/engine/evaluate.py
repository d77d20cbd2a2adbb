"""Accuracy on a fixed set of episodes: the same episodes every time for a given seed."""

import json
import logging
import math
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.engine import checkpoint
from bilevel_cli.engine.build import build_data, build_task
from bilevel_cli.engine.config import check_config, resolve_device
from bilevel_cli.errors import UserError

log = logging.getLogger(__name__)


def evaluate(task, images: torch.Tensor, ways: int, shots: int, queries: int, episodes: int, seed: int,
             batch: int) -> dict[str, float]:
    """Mean query accuracy over `episodes` episodes, in %, with its 95% confidence interval
    (1.96·std/√n over episodes, the convention of the few-shot literature)."""
    sampler = EpisodeSampler(images, ways, shots, queries, seed)
    was_training = task.training
    task.eval()
    accuracies = torch.cat([task.accuracy(sampler.sample(min(batch, episodes - done)))
                            for done in range(0, episodes, batch)])
    task.train(was_training)
    mean, std = accuracies.mean().item(), accuracies.std().item() if episodes > 1 else 0.0
    return {"acc": 100 * mean, "ci95": 100 * 1.96 * std / math.sqrt(episodes), "episodes": episodes}


def evaluate_checkpoint(path: str, overrides: list[str], run_dir: Path) -> dict:
    """Test a trained checkpoint under its training config, with value overrides (e.g. `hypergrad.T=10`,
    `task.ways=20`, `trainer.test_episodes=1000`) applied on top; writes config.yaml and summary.json."""
    state = checkpoint.load(path)
    cfg = OmegaConf.create(state["config"])
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise UserError(f"eval cannot switch the config group {key!r}; the checkpoint fixes it "
                            "(override single values such as hypergrad.T=10 or task.ways=20)")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    check_config(cfg)
    device = resolve_device(cfg.device)
    splits = build_data(cfg, device)
    task = build_task(cfg, in_channels=splits["test"].shape[2]).to(device)
    try:
        task.load_state_dict(state["task"])
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit the config's backbone/inner settings: "
                        f"{str(error).splitlines()[0]}") from None
    ep, tr = cfg.task, cfg.trainer
    test = evaluate(task, splits["test"], ep.ways, ep.shots, ep.queries, tr.test_episodes, tr.eval_seed, tr.eval_batch)
    summary = {"test_acc": test["acc"], "test_ci95": test["ci95"], "test_episodes": test["episodes"],
               "ways": ep.ways, "shots": ep.shots, "T": cfg.hypergrad.T, "checkpoint": str(Path(path).resolve()),
               "checkpoint_step": state.get("step")}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(f"test accuracy {test['acc']:.2f} ± {test['ci95']:.2f}% over {test['episodes']} episodes "
             f"({ep.ways}-way {ep.shots}-shot, T={cfg.hypergrad.T})")
    return summary
