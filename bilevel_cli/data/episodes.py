"""N-way K-shot episodes drawn as index tensors from an in-memory uint8 image store, on its device."""

from dataclasses import dataclass

import torch

from bilevel_cli.errors import UserError


@dataclass
class Episodes:
    """A meta-batch of B episodes; images hold each episode's N·K support then N·Q query images."""
    images: torch.Tensor  # uint8 (B, N·(K+Q), C, H, W)
    support_labels: torch.Tensor  # int64 (B, N·K), class k of the episode is label k
    query_labels: torch.Tensor  # int64 (B, N·Q)
    classes: torch.Tensor  # int64 (B, N): the split's class behind each episode label

    @property
    def segments(self) -> tuple[int, int]:
        return self.support_labels.shape[1], self.query_labels.shape[1]


def check_supply(splits: dict[str, torch.Tensor], ways: int, shots: int, queries: int) -> None:
    """Each split (classes, per_class, C, H, W) can supply N-way episodes of K + Q images per class; checked for
    all splits before training, so that a validation split too small does not stop a run at its first validation."""
    for name, images in sorted(splits.items(), key=lambda item: item[1].shape[:2]):
        classes, per_class = images.shape[:2]
        if ways > classes:
            raise UserError(f"{ways}-way episodes need {ways} classes but the split has {classes} ({name}); lower "
                            f"task.ways to {classes} or fewer")
        if shots + queries > per_class:
            raise UserError(f"{shots} shots + {queries} queries need {shots + queries} images per class but the "
                            f"split has {per_class} ({name}); lower task.shots or task.queries to sum to {per_class} "
                            "or fewer")


class EpisodeSampler:
    """Samples episodes from `images` (classes, per_class, C, H, W): N distinct classes per episode,
    K + Q distinct images per class (support and query disjoint), all episodes at once."""

    def __init__(self, images: torch.Tensor, ways: int, shots: int, queries: int, seed: int):
        check_supply({"given": images}, ways, shots, queries)
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries
        self.generator = torch.Generator(images.device).manual_seed(seed)
        device = images.device
        self.support_labels = torch.arange(ways, device=device).repeat_interleave(shots)
        self.query_labels = torch.arange(ways, device=device).repeat_interleave(queries)

    def sample(self, batch: int) -> Episodes:
        return self.gather(*self.draw(batch))

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors of `batch` episodes: classes (B, N) and, per class, the K + Q images (B, N, K+Q)."""
        classes, per_class = self.images.shape[:2]
        device, g = self.images.device, self.generator
        # argsort of uniform noise: B independent random permutations in one kernel, no Python loop.
        picked_classes = torch.rand(batch, classes, generator=g, device=device).argsort(1)[:, :self.ways]
        picked = torch.rand(batch, self.ways, per_class, generator=g, device=device).argsort(2)
        return picked_classes, picked[..., :self.shots + self.queries]

    def gather(self, classes: torch.Tensor, picked: torch.Tensor) -> Episodes:
        """The episodes that `draw` chose, as images: support images first, then query images."""
        x = self.images[classes[..., None], picked]  # (B, N, K+Q, C, H, W)
        images = torch.cat([x[:, :, :self.shots].flatten(1, 2), x[:, :, self.shots:].flatten(1, 2)], dim=1)
        batch = len(classes)
        return Episodes(images, self.support_labels.expand(batch, -1), self.query_labels.expand(batch, -1), classes)
