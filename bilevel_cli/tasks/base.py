"""What the engine asks of a task: the outer loop of every bilevel problem is the same, only the task changes."""

import torch
from torch import nn

from bilevel_cli.errors import UserError


class Task(nn.Module):
    """A bilevel problem with its data. Its trainable parameters are the outer variables λ; its state_dict is
    what a checkpoint keeps (λ, plus any inner state that lives across hyper-iterations, as buffers)."""

    # For the throughput in the logs: episodes per hyper-iteration, None when the task has no episodes.
    episodes_per_iteration: int | None = None

    def hyper_iteration(self, with_metrics: bool) -> tuple[torch.Tensor, dict[str, float] | None]:
        """Draws the task's batch, computes the outer loss and leaves its hypergradient in the .grad of the
        outer variables. Returns (outer loss as a 0-dim tensor, metrics for the log when asked, else None)."""
        raise NotImplementedError

    def generators(self) -> list[torch.Generator]:
        """The task's own random number generators (e.g. an episode sampler's): a checkpoint keeps their state."""
        return []

    def shard(self, rank: int, world: int) -> None:
        """From now on, take only part `rank` of `world` of every hyper-iteration's batch (one run on several
        processes; the engine averages the hypergradients). Tasks whose batch does not split say so."""
        raise UserError(f"task {type(self).__name__} cannot split its hyper-iterations across processes; "
                        "run it without torchrun")

    def constrain(self) -> None:
        """Called after every outer step: projects λ back onto its feasible set, if it has one."""

    def validate(self) -> dict[str, float]:
        """Scores the current λ on held-out data: `val_acc` (the best checkpoint is chosen by it), and more."""
        raise NotImplementedError

    def test(self) -> dict:
        """Scores the current λ on the test data: `test_acc` and more, for summary.json."""
        raise NotImplementedError
