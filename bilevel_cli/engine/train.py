"""The outer loop of Algorithm 1, for every task: a hyper-iteration, an outer step; validate; test the best."""

import json
import logging
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bilevel_cli.engine import checkpoint, distributed
from bilevel_cli.engine.allocator import keep_freed_memory
from bilevel_cli.engine.build import build_data, build_task, make
from bilevel_cli.engine.config import check_config, native_bf16, resolve_device
from bilevel_cli.engine.files import write_text_atomically
from bilevel_cli.engine.interrupt import StopRequests
from bilevel_cli.engine.loggers import open_loggers
from bilevel_cli.engine.rerun import continue_command
from bilevel_cli.engine.resume import (check_resumable, checkpoint_to_resume, finished_sweep_job, rng_state,
                                      set_aside_summary, set_rng_state)
from bilevel_cli.engine.run_lock import claim_run_dir
from bilevel_cli.engine.sweep import stop_file, stop_signal
from bilevel_cli.errors import Interrupted, UserError

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path, sweep: str | None = None) -> dict:
    """Train the outer variables, keep the best by validation accuracy, test it; returns the summary. Continues
    the run directory's last checkpoint when there is one (see `resume.checkpoint_to_resume`)."""
    stopped = stop_signal(stop_file())
    if stopped:  # a sweep's job whose turn came after a signal stopped the sweep
        raise Interrupted(f"{run_dir.name} not started: the sweep stopped on {signal.Signals(stopped).name}", stopped)
    if distributed.rank() != 0:  # the leader alone writes the run directory, and holds it
        return _train(cfg, run_dir, sweep)
    with claim_run_dir(run_dir):
        return _train(cfg, run_dir, sweep)


def _train(cfg: DictConfig, run_dir: Path, sweep: str | None) -> dict:
    keep_freed_memory()
    check_config(cfg)
    if sweep is not None and cfg.resume is None:
        kept = finished_sweep_job(run_dir, OmegaConf.to_container(cfg, resolve=True))
        if kept:
            log.info(f"{run_dir} holds this job's finished run: kept (resume=true trainer.steps=<more> trains it "
                     "longer)")
            return kept
    device = distributed.device_of_rank(resolve_device(cfg.device))
    world, leader = distributed.world_size(), distributed.rank() == 0  # the leader writes the run directory
    if cfg.trainer.precision == "bf16" and not native_bf16(device):
        log.warning(f"trainer.precision=bf16 on {device}, which has no native bfloat16 (AVX512-BF16, AMX or a bf16 "
                    "GPU): autocast emulates it, slower than fp32; drop the override on this machine")
    resume_from = checkpoint_to_resume(cfg.resume, run_dir, cfg.trainer.steps)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg, build_data(cfg, device))
    if world > 1:
        task.shard(distributed.rank(), world)
        distributed.broadcast_parameters(task)
    tr = cfg.trainer
    optimizer = make(cfg, "outer.optimizer", task.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 / (1 + cfg.outer.decay * k))
    config = OmegaConf.to_container(cfg, resolve=True)
    # Where the run stands: all of it goes into last.pt, so that a resumed run continues bit for bit.
    run = {"step": 0, "best": {"val_acc": -1.0, "step": 0}, "bad_steps": 0, "wall_time": 0.0,
           "window": (torch.zeros((), device=device), 0)}
    if resume_from:
        saved = checkpoint.load(resume_from, device)
        check_resumable(saved["config"], config, resume_from)
        checkpoint.load_task_state(task, saved, resume_from)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        set_rng_state(saved["rng"], task.generators())
        run = saved["run"]
        if leader:
            set_aside_summary(run_dir)
        log.info(f"resuming {resume_from} at step {run['step']}")
    if leader:
        write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True),
                              "no step of this attempt has run, earlier checkpoints are intact: make room, then "
                              "run the command again")
    loggers = open_loggers(cfg.logger, run_dir, config, sweep, resume_step=run["step"] if resume_from else None) \
        if leader else []
    method = cfg.hypergrad.method if cfg.task.name != "joint_training" else None
    log.info(f"{cfg.task.name}, T={cfg.hypergrad.T}, hypergradient {method}, "
             f"{sum(p.numel() for p in task.parameters())} outer variables, on {device}; run dir {run_dir}")

    def save_last(step: int) -> None:
        if not leader:
            return
        run.update(step=step, wall_time=time.perf_counter() - start, window=(window_loss, window_steps))
        checkpoint.save(run_dir / "last.pt", {"task": task.state_dict(), "config": config, "step": step,
                                              "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                              "rng": rng_state(task.generators()), "run": run})

    best = run["best"]
    window_start = time.perf_counter()
    start = window_start - run["wall_time"]  # wall time counts the earlier attempts of a resumed run too
    window_loss, window_steps = run["window"]
    step = run["step"]
    # disable=None: no bar when stderr is not a terminal (batch jobs); the log still says every validation.
    bar = tqdm(range(step + 1, tr.steps + 1), desc="train", unit="it", dynamic_ncols=True,
               disable=None if leader else True, initial=step, total=tr.steps)
    with logging_redirect_tqdm(), bar, StopRequests() as stop:
        for step in bar:
            logging_step = step % tr.log_every == 0 or step == tr.steps
            optimizer.zero_grad(set_to_none=True)
            try:
                loss, task_metrics = task.hyper_iteration(with_metrics=logging_step)
            except torch.cuda.OutOfMemoryError:
                raise UserError(_out_of_memory(device, step)) from None
            stopping = stop.requested() is not None
            if world > 1:  # every rank leaves with the same mean loss, hypergradient and decision to stop
                loss, stopping = distributed.average(loss, stopping, task)
                task_metrics = task_metrics and distributed.mean_metrics(task_metrics)
            metrics = {"step": step}
            if _finite(loss, task):
                run["bad_steps"] = 0
                window_loss += loss  # stays on the device: no sync until the next log line
                window_steps += 1
                optimizer.step()
                schedule.step()
                task.constrain()
            else:  # the outer variables stay as they were; the run stops if it keeps happening
                run["bad_steps"] += 1
                metrics["skipped_nonfinite"] = run["bad_steps"]
                log.warning(f"step {step}: non-finite outer loss or hypergradient; step skipped "
                            f"({run['bad_steps']} in a row)")
                if run["bad_steps"] >= tr.max_bad_steps:
                    raise UserError(f"{run['bad_steps']} hyper-iterations in a row gave a non-finite outer loss or "
                                    f"hypergradient (step {step}); the last good checkpoint is {run_dir / 'last.pt'}; "
                                    "lower outer.optimizer.lr or inner.lr, or try hypergrad=checkpointed with float64")
            if logging_step and window_steps:
                now = time.perf_counter()
                seconds = (now - window_start) / window_steps
                metrics.update(outer_loss=(window_loss / window_steps).item(), **(task_metrics or {}),
                               hypergrad_norm=_grad_norm(task), outer_lr=schedule.get_last_lr()[0],
                               s_per_iteration=seconds, wall_time=now - start)
                if task.episodes_per_iteration:
                    metrics["episodes_per_s"] = task.episodes_per_iteration / seconds
                window_loss = torch.zeros((), device=device)
                window_steps, window_start = 0, now
            if step % tr.val_every == 0 or step == tr.steps:
                val = task.validate()
                metrics.update(val, wall_time=time.perf_counter() - start)
                if val["val_acc"] > best["val_acc"]:
                    best.update(val_acc=val["val_acc"], step=step)
                    if leader:
                        checkpoint.save(run_dir / "best.pt", {"task": task.state_dict(), "config": config, "step": step,
                                                              "val_acc": val["val_acc"]})
                save_last(step)
                log.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items())
                         + f" (best val_acc {best['val_acc']:.2f} at step {best['step']})")
                window_start = time.perf_counter()  # the rates measure training alone
            if len(metrics) > 1:
                for logger in loggers:
                    logger.log(metrics)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("outer_loss", "train_acc", "val_acc") if k in metrics})
            if stopping:
                if not (step % tr.val_every == 0 or step == tr.steps):
                    save_last(step)
                signum = stop.requested() or signal.SIGTERM  # another rank's signal
                raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved; "
                                  f"continue with: {continue_command(run_dir)}", signum)
            if "val_acc" in metrics and tr.patience and step - best["step"] >= tr.patience * tr.val_every:
                log.info(f"early stop at step {step}: no better validation in the last {tr.patience}")
                break

    distributed.finish()
    if not leader:
        return {}
    task.load_state_dict(checkpoint.load(run_dir / "best.pt", device)["task"])
    test = task.test()
    summary = {**test, "best_val_acc": best["val_acc"], "best_step": best["step"], "last_step": step,
               "task": cfg.task.name, "method": method, "T": cfg.hypergrad.T, "steps": tr.steps, "seed": cfg.seed,
               "device": str(device), "wall_time_s": time.perf_counter() - start}
    log.info(f"{describe(test)} (best val_acc {best['val_acc']:.2f} at step {best['step']})")
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n",
                          "the checkpoints are intact: make room, then rerun, which tests its best.pt again and "
                          f"writes the summary: {continue_command(run_dir)}")
    for logger in loggers:
        logger.finish(summary)
    return summary


def describe(test: dict) -> str:
    """The test result in one line: accuracy ± CI first, then the task's other figures."""
    ci = f" ± {test['test_ci95']:.2f}" if "test_ci95" in test else ""
    rest = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in test.items()
            if k not in ("test_acc", "test_ci95")]
    return f"test accuracy {test['test_acc']:.2f}{ci}% ({', '.join(rest)})"


def _finite(loss: torch.Tensor, task: torch.nn.Module) -> bool:
    """Whether the outer loss and every hypergradient entry are finite: one fused reduction, one sync per step."""
    grads = [p.grad for p in task.parameters() if p.grad is not None]
    total = loss.detach().float() + sum(g.float().sum() * 0 for g in grads)  # NaN or Inf anywhere propagates
    return bool(torch.isfinite(total))


def _out_of_memory(device: torch.device, step: int) -> str:
    used = f" ({torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB at peak)" if device.type == "cuda" else ""
    return (f"out of memory on {device} at step {step}{used}; lower task.meta_batch, or use hypergrad=checkpointed "
            "(memory ∝ √T), hypergrad=truncated hypergrad.options.K=<K>, a smaller hypergrad.T, or "
            "trainer.precision=bf16 (the backbone in bfloat16)")


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)).item() if grads else 0.0
