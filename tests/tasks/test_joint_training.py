import torch
import torch.nn.functional as F

from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.models import Conv4
from bilevel_cli.tasks import JointTraining


def _setup():
    torch.manual_seed(0)
    store = torch.randint(0, 256, (10, 8, 1, 16, 16), dtype=torch.uint8)
    episodes = EpisodeSampler(store, ways=3, shots=2, queries=4, seed=0).sample(3)
    backbone = Conv4(channels=4)
    return JointTraining(backbone, ways=3, T=4, classes=10, feature_dim=4).double(), episodes


def test_joint_training_classifies_the_global_classes():
    """The loss is the softmax over all 10 split classes of every image, labelled by its split class."""
    task, episodes = _setup()
    loss, accuracy = task.training_step(episodes, with_accuracy=True)
    features = task.features(episodes)
    local = torch.cat([episodes.support_labels, episodes.query_labels], 1)
    targets = torch.stack([episodes.classes[b][local[b]] for b in range(3)])
    expected = F.cross_entropy(task.classifier(features).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected.detach())
    assert accuracy.shape == (3,)
    assert task.classifier.weight.grad is not None and task.backbone.convs[0].weight.grad is not None


def test_joint_training_is_tested_like_a_hyper_representation():
    """Its test accuracy is that of a T-step linear head on the frozen features, with a fixed inner rate."""
    task, episodes = _setup()
    assert "inner_lr" not in dict(task.named_parameters())
    accuracy = task.accuracy(episodes, [task.T])[0]
    assert accuracy.shape == (3,) and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_joint_training_learns():
    task, episodes = _setup()
    optimizer = torch.optim.Adam(task.parameters(), 1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        losses.append(task.training_step(episodes)[0].item())
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]
