"""How near a hyper-representation checkpoint's inner steps are to diverging (RESULTS.md, "Trained with T=10").

    python scripts/inner_stability.py outputs/<run>/best.pt [outputs/<run>/last.pt ...] [--episodes 64]

For each checkpoint: the inner rate times λmax, the largest eigenvalue of the support loss's Hessian in the head's
weights at the zero-initialized head where the inner steps start (median and max over training episodes), and the
support features' mean |x|². Gradient descent on a quadratic diverges once rate·λmax passes 2; as the backbone's
features grow during training, a fixed inner rate moves towards that edge (with task.curvature_scaled_rate each
episode's rate is inner.lr/κ, and rate·λmax stays at most inner.lr). The episodes are the run's own training
episodes, drawn from its seed, so the figures repeat from run to run.
"""

import argparse
import math
import sys

import torch

from bilevel_cli.engine.evaluate import load_checkpointed_task
from bilevel_cli.errors import UserError


def support_curvature(support: torch.Tensor, ways: int) -> torch.Tensor:
    """λmax of the Hessian of the mean softmax cross-entropy of a linear head at zero, in its weights, for each
    episode's support features (B, n, d). At zero every class is equally likely, so the Hessian is the features'
    second moment XᵀX/n times the softmax's (I − 11ᵀ/N)/N, whose largest eigenvalue is 1/N; XᵀX/n shares its
    nonzero eigenvalues with the n×n Gram matrix XXᵀ/n, the smaller one to decompose."""
    n = support.shape[1]
    gram = support @ support.transpose(1, 2) / n
    return torch.linalg.eigvalsh(gram)[:, -1] / ways


def measure(path: str, episodes: int) -> str:
    task, cfg, state = load_checkpointed_task(path)
    if cfg.task.name != "hyper_representation":
        raise UserError(f"{path} is a {cfg.task.name} checkpoint; this measures hyper_representation runs")
    protocol, lr = task.protocol, float(task.inner_lr)
    n_support = protocol.ways * protocol.shots
    curvatures, squared_norms = [], []
    with torch.no_grad():
        for _ in range(math.ceil(episodes / protocol.meta_batch)):
            support = task.features(protocol.training_episodes())[:, :n_support]
            # times each episode's rate factor: 1/κ under task.curvature_scaled_rate, 1 otherwise
            factor = torch.as_tensor(task.rate_scale(support)).flatten()
            curvatures.append(support_curvature(support, protocol.ways) * factor)
            squared_norms.append((support ** 2).sum(-1).mean(1))
    scaled = lr * torch.cat(curvatures)[:episodes]
    rate = f"{lr:g}/κ" if task.curvature_scaled_rate else f"{lr:g}"
    return (f"{path}: step {state['step']}, inner rate {rate}, rate·λmax median {scaled.median():.2f} max "
            f"{scaled.max():.2f}, support features' mean |x|² {torch.cat(squared_norms)[:episodes].mean():.0f} "
            f"({len(scaled)} training episodes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="best.pt or last.pt of hyper_representation runs")
    parser.add_argument("--episodes", type=int, default=64, help="training episodes to measure on (default 64)")
    args = parser.parse_args()
    try:
        for path in args.checkpoints:
            print(measure(path, args.episodes))
    except UserError as error:
        sys.exit(f"inner_stability: {error}")


if __name__ == "__main__":
    main()
