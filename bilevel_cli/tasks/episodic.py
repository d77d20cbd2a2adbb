"""The few-shot protocol: training episodes from a seeded sampler, validation and test on fixed episodes."""

import logging
import math
from dataclasses import dataclass, field

import torch

from bilevel_cli.data.episodes import Episodes, EpisodeSampler, check_supply
from bilevel_cli.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class EpisodeProtocol:
    """A few-shot data set's splits (classes, per_class, C, H, W) and how episodes are drawn from them."""
    splits: dict[str, torch.Tensor]
    ways: int
    shots: int
    queries: int
    meta_batch: int
    seed: int  # of the training episodes
    eval_seed: int  # the same validation and test episodes for every run
    eval_batch: int  # episodes per batched evaluation forward pass
    val_episodes: int
    test_episodes: int
    T_candidates: list[int] = field(default_factory=list)  # for T re-selected on meta-validation

    def __post_init__(self):
        check_supply(self.splits, self.ways, self.shots, self.queries)
        self.sampler = EpisodeSampler(self.splits["train"], self.ways, self.shots, self.queries, seed=self.seed)
        self.part = slice(None)  # of the meta-batch's episodes, that this process trains on

    def shard(self, rank: int, world: int) -> None:
        """Part `rank` of `world` equal parts of every meta-batch (one run on several processes)."""
        if self.meta_batch % world:
            raise UserError(f"task.meta_batch={self.meta_batch} does not split into {world} equal parts, one per "
                            f"process; use a multiple of {world}")
        size = self.meta_batch // world
        self.part = slice(rank * size, (rank + 1) * size)

    def training_episodes(self) -> Episodes:
        """The next meta-batch, or this process's part of it: every process draws the whole meta-batch's indices
        from the same generator, so that the parts together are the episodes one process would train on."""
        classes, picked = self.sampler.draw(self.meta_batch)
        return self.sampler.gather(classes[self.part], picked[self.part])

    def evaluate(self, task, split: str, episodes: int) -> dict[str, float]:
        return evaluate(task, self.splits[split], self.ways, self.shots, self.queries, episodes, self.eval_seed,
                        self.eval_batch)

    def reselect_T(self, task) -> None:
        """task.T := the candidate with the best meta-validation accuracy (nothing to do without candidates)."""
        if self.T_candidates:
            select_T(task, self.splits["val"], self.T_candidates, ways=self.ways, shots=self.shots,
                     queries=self.queries, episodes=self.val_episodes, seed=self.eval_seed, batch=self.eval_batch)


def evaluate(task, images: torch.Tensor, ways: int, shots: int, queries: int, episodes: int, seed: int,
             batch: int) -> dict[str, float]:
    """Mean query accuracy over `episodes` episodes, in %, with its 95% confidence interval
    (1.96·std/√n over episodes, the convention of the few-shot literature)."""
    return _summary(_accuracies(task, images, [task.T], ways, shots, queries, episodes, seed, batch)[0])


def select_T(task, images: torch.Tensor, candidates, **episodes) -> dict[int, float]:
    """Sets task.T to the candidate with the best accuracy on `images` (meta-validation), as the paper
    re-selects the number of inner steps for testing; returns every candidate's accuracy. One backbone pass
    over the episodes serves every candidate."""
    candidates = list(candidates)
    accuracies = _accuracies(task, images, candidates, **episodes)
    scores = {T: _summary(row)["acc"] for T, row in zip(candidates, accuracies)}
    task.T = max(scores, key=scores.get)
    log.info("inner steps re-selected on meta-validation: T=%d (%s)", task.T,
             ", ".join(f"T={T}: {acc:.2f}%" for T, acc in scores.items()))
    return scores


def _accuracies(task, images: torch.Tensor, Ts: list[int], ways: int, shots: int, queries: int, episodes: int,
                seed: int, batch: int) -> torch.Tensor:
    """Per-episode query accuracy (len(Ts), episodes) of heads trained by each of Ts inner steps."""
    sampler = EpisodeSampler(images, ways, shots, queries, seed)
    # All indices first, images chunk by chunk: the episodes depend on the seed alone, not on `batch`.
    classes, picked = sampler.draw(episodes)
    was_training = task.training
    task.eval()
    accuracies = torch.cat([task.accuracy(sampler.gather(classes[i:i + batch], picked[i:i + batch]), Ts)
                            for i in range(0, episodes, batch)], 1)
    task.train(was_training)
    return accuracies


def _summary(accuracies: torch.Tensor) -> dict[str, float]:
    n = len(accuracies)
    mean, std = accuracies.mean().item(), accuracies.std().item() if n > 1 else 0.0
    return {"acc": 100 * mean, "ci95": 100 * 1.96 * std / math.sqrt(n), "episodes": n}
