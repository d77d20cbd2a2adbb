"""Classical joint training of a shared representation, the baseline of the paper's third experiment.

The backbone and one softmax classifier over all meta-train classes are trained together by ordinary
back-propagation on the meta-batch's images (no inner problem). The representation is then evaluated
exactly like a hyper-representation: frozen, with a linear head fitted by T inner steps on each
test episode's support set (inherited from HyperRepresentation, with a fixed inner learning rate).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.data.episodes import Episodes
from bilevel_cli.tasks.episodic import EpisodeProtocol
from bilevel_cli.tasks.hyper_representation import HyperRepresentation


class JointTraining(HyperRepresentation):
    def __init__(self, backbone: nn.Module, ways: int, T: int, classes: int, feature_dim: int, inner: str = "gd",
                 inner_lr: float = 0.1, inner_options: dict | None = None, protocol: EpisodeProtocol | None = None,
                 precision: str = "fp32"):
        super().__init__(backbone, ways, T, inner=inner, inner_lr=inner_lr, learn_lr=False,
                         inner_options=inner_options, protocol=protocol, precision=precision)
        self.classifier = nn.Linear(feature_dim, classes)

    def training_step(self, episodes: Episodes, with_accuracy: bool = False):
        """Cross-entropy over all meta-train classes; leaves the gradient in .grad. Returns (loss, per-episode
        accuracy of that classifier or None)."""
        targets = episodes.classes.gather(1, torch.cat([episodes.support_labels, episodes.query_labels], 1))
        logits = self.classifier(self.features(episodes))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        accuracy = (logits.argmax(-1) == targets).float().mean(1).detach() if with_accuracy else None
        return loss.detach(), accuracy
