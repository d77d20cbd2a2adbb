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
    # All indices first, images chunk by chunk: the episodes depend on the seed alone, not on `batch`.
    classes, picked = sampler.draw(episodes)
    was_training = task.training
    task.eval()
    accuracies = torch.cat([task.accuracy(sampler.gather(classes[i:i + batch], picked[i:i + batch]))
                            for i in range(0, episodes, batch)])
    task.train(was_training)
    mean, std = accuracies.mean().item(), accuracies.std().item() if episodes > 1 else 0.0
    return {"acc": 100 * mean, "ci95": 100 * 1.96 * std / math.sqrt(episodes), "episodes": episodes}


def select_T(task, images: torch.Tensor, candidates, **episodes) -> dict[int, float]:
    """Sets task.T to the candidate with the best accuracy on `images` (meta-validation), as the paper
    re-selects the number of inner steps for testing; returns every candidate's accuracy."""
    scores = {}
    for T in candidates:
        task.T = T
        scores[T] = evaluate(task, images, **episodes)["acc"]
    task.T = max(scores, key=scores.get)
    log.info("inner steps re-selected on meta-validation: T=%d (%s)", task.T,
             ", ".join(f"T={T}: {acc:.2f}%" for T, acc in scores.items()))
    return scores


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
    task = build_task(cfg, splits["train"]).to(device)
    try:
        task.load_state_dict(state["task"])
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit the config's backbone/inner settings: "
                        f"{str(error).splitlines()[0]}") from None
    ep, tr = cfg.task, cfg.trainer
    protocol = dict(ways=ep.ways, shots=ep.shots, queries=ep.queries, seed=tr.eval_seed, batch=tr.eval_batch)
    if tr.select_T:
        select_T(task, splits["val"], tr.select_T, episodes=tr.val_episodes, **protocol)
    test = evaluate(task, splits["test"], episodes=tr.test_episodes, **protocol)
    summary = {"test_acc": test["acc"], "test_ci95": test["ci95"], "test_episodes": test["episodes"],
               "test_T": task.T, "ways": ep.ways, "shots": ep.shots, "T": cfg.hypergrad.T,
               "checkpoint": str(Path(path).resolve()), "checkpoint_step": state.get("step")}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(f"test accuracy {test['acc']:.2f} ± {test['ci95']:.2f}% over {test['episodes']} episodes "
             f"({ep.ways}-way {ep.shots}-shot, T={task.T})")
    return summary
