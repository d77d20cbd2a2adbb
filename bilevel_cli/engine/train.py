"""The outer loop of Algorithm 1, for every task: a hyper-iteration, an outer step; validate; test the best."""

import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bilevel_cli.engine import checkpoint
from bilevel_cli.engine.allocator import keep_freed_memory
from bilevel_cli.engine.build import build_data, build_task
from bilevel_cli.engine.config import check_config, resolve_device
from bilevel_cli.engine.loggers import open_loggers

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path, sweep: str | None = None) -> dict:
    """Train the outer variables, keep the best by validation accuracy, test it; returns the summary."""
    keep_freed_memory()
    check_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg, build_data(cfg, device))
    tr = cfg.trainer
    optimizer = instantiate(cfg.outer.optimizer)(task.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 / (1 + cfg.outer.decay * k))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    config = OmegaConf.to_container(cfg, resolve=True)
    loggers = open_loggers(cfg.logger, run_dir, config, sweep)
    method = cfg.hypergrad.method if cfg.task.name != "joint_training" else None
    log.info(f"{cfg.task.name}, T={cfg.hypergrad.T}, hypergradient {method}, "
             f"{sum(p.numel() for p in task.parameters())} outer variables, on {device}; run dir {run_dir}")

    best = {"val_acc": -1.0, "step": 0}
    start = window_start = time.perf_counter()
    window_loss, window_steps = torch.zeros((), device=device), 0
    # disable=None: no bar when stderr is not a terminal (batch jobs); the log still says every validation.
    bar = tqdm(range(1, tr.steps + 1), desc="train", unit="it", dynamic_ncols=True, disable=None)
    with logging_redirect_tqdm(), bar:
        for step in bar:
            logging_step = step % tr.log_every == 0 or step == tr.steps
            optimizer.zero_grad(set_to_none=True)
            loss, task_metrics = task.hyper_iteration(with_metrics=logging_step)
            window_loss += loss  # stays on the device: no sync until the next log line
            window_steps += 1
            metrics = {"step": step}
            if logging_step:
                now = time.perf_counter()
                seconds = (now - window_start) / window_steps
                metrics.update(outer_loss=(window_loss / window_steps).item(), **task_metrics,
                               hypergrad_norm=_grad_norm(task), outer_lr=schedule.get_last_lr()[0],
                               s_per_iteration=seconds, wall_time=now - start)
                if task.episodes_per_iteration:
                    metrics["episodes_per_s"] = task.episodes_per_iteration / seconds
                window_loss.zero_()
                window_steps, window_start = 0, now
            optimizer.step()
            schedule.step()
            task.constrain()
            if step % tr.val_every == 0 or step == tr.steps:
                val = task.validate()
                metrics.update(val, wall_time=time.perf_counter() - start)
                state = {"task": task.state_dict(), "config": config, "step": step, "val_acc": val["val_acc"]}
                if val["val_acc"] > best["val_acc"]:
                    best = {"val_acc": val["val_acc"], "step": step}
                    checkpoint.save(run_dir / "best.pt", state)
                checkpoint.save(run_dir / "last.pt", {**state, "optimizer": optimizer.state_dict(),
                                                      "schedule": schedule.state_dict(), "best": best})
                log.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items())
                         + f" (best val_acc {best['val_acc']:.2f} at step {best['step']})")
                window_start = time.perf_counter()  # the rates measure training alone
            if len(metrics) > 1:
                for logger in loggers:
                    logger.log(metrics)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("outer_loss", "train_acc", "val_acc") if k in metrics})
            if "val_acc" in metrics and tr.patience and step - best["step"] >= tr.patience * tr.val_every:
                log.info(f"early stop at step {step}: no better validation in the last {tr.patience}")
                break

    task.load_state_dict(checkpoint.load(run_dir / "best.pt", device)["task"])
    test = task.test()
    summary = {**test, "best_val_acc": best["val_acc"], "best_step": best["step"], "last_step": step,
               "task": cfg.task.name, "method": method, "T": cfg.hypergrad.T, "steps": tr.steps, "seed": cfg.seed,
               "device": str(device), "wall_time_s": time.perf_counter() - start}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for logger in loggers:
        logger.finish(summary)
    log.info(f"{describe(test)} (best val_acc {best['val_acc']:.2f} at step {best['step']})")
    return summary


def describe(test: dict) -> str:
    """The test result in one line: accuracy ± CI first, then the task's other figures."""
    ci = f" ± {test['test_ci95']:.2f}" if "test_ci95" in test else ""
    rest = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in test.items()
            if k not in ("test_acc", "test_ci95")]
    return f"test accuracy {test['test_acc']:.2f}{ci}% ({', '.join(rest)})"


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)).item() if grads else 0.0
