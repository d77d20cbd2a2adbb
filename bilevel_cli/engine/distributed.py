"""One run on several processes, started by torchrun: `torchrun --nproc_per_node=N -m bilevel_cli train ...`.

Every rank draws the same meta-batch and takes its own slice of the episodes (`Task.shard`); one all-reduce
per hyper-iteration averages the outer loss and the hypergradient over the ranks, so that every rank takes
the same outer step, as one process with the whole meta-batch would. Ranks then agree on everything that
decides the run (non-finite steps, stop requests, validation, early stopping) without further messages.
Rank 0 alone writes the run directory and logs. Backends: gloo for CPU tensors, NCCL for CUDA ones.
"""

import os
from datetime import datetime

import torch
import torch.distributed as dist

from bilevel_cli.errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def hydra_overrides(overrides: list[str]) -> list[str]:
    """Joins the process group and returns the overrides that give all ranks rank 0's run directory, with
    nothing written there by the others (no .hydra/, no log file). [] when not started by torchrun."""
    if world_size() == 1:
        return []
    if {"-m", "--multirun"} & set(overrides):
        raise UserError("torchrun runs one job on several processes; run sweeps (-m) without torchrun, "
                        "or start torchrun once per job")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    stamp = [datetime.now().strftime("%Y-%m-%d_%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)  # ranks start a second apart: rank 0's clock names the run
    extra = [] if any(o.startswith("hydra.run.dir=") for o in overrides) else [f"hydra.run.dir=outputs/train/{stamp[0]}"]
    if rank() > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return extra


def device_of_rank(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its local rank (torchrun's LOCAL_RANK)."""
    if world_size() > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's initial outer variables everywhere (the same seed gives the same ones; this makes sure)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average(loss: torch.Tensor, stop: bool, module: torch.nn.Module) -> tuple[torch.Tensor, bool]:
    """One all-reduce of [loss, stop request, every .grad]: returns the mean loss and whether any rank was asked
    to stop, and leaves the mean hypergradient in .grad. Buffers (running BatchNorm statistics) follow rank 0."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([loss.detach().reshape(1).to(grads[0].dtype), grads[0].new_tensor([float(stop)]),
                      *(g.reshape(-1) for g in grads)])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 2
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    return flat[0], bool(flat[1] > 0)


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A task's logged figures (e.g. training accuracy on each rank's part) averaged over the ranks."""
    values = torch.tensor(list(metrics.values()), dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(metrics, (values / world_size()).tolist()))


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
