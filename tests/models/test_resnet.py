from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.models import ResNet12, ResNet18
from bilevel_cli.models.batchnorm import EpisodeBatchNorm2d
from bilevel_cli.tasks import HyperRepresentation

BACKBONES = sorted(f.stem for f in (Path(CONFIG_DIR) / "backbone").glob("*.yaml"))


def _small(name, **kwargs):
    """ResNet-12 at narrow widths (same structure) and the full ResNet-18, which has no width option."""
    torch.manual_seed(0)
    return ResNet12(channels=[4, 8, 8, 8], **kwargs) if name == "resnet12" else ResNet18(**kwargs)


def test_resnet12_at_84_pools_640_maps_of_5x5():
    model, maps = ResNet12(), []
    model.blocks.register_forward_hook(lambda module, inputs, output: maps.append(output.shape))
    assert model(torch.rand(1, 2, 3, 84, 84), (1, 1)).shape == (1, 2, 640)
    assert maps == [(2, 640, 5, 5)]


@pytest.mark.parametrize("backbone, features", [(ResNet12, 640), (ResNet18, 512)])
def test_feature_sizes_at_32(backbone, features):
    assert backbone()(torch.rand(1, 2, 3, 32, 32), (1, 1)).shape == (1, 2, features)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    assert count(ResNet12()) == pytest.approx(12.4e6, rel=0.03)
    # torchvision's 11,689,512 less the classifier (513,000) and the 7×7 first conv, now 3×3 (9,408 → 1,728).
    assert count(ResNet18()) == 11_168_832
    assert count(ResNet18(in_channels=1)) == 11_168_832 - 2 * 576


def test_resnet18_normalizes_with_episode_batchnorm_only():
    modules = list(ResNet18().modules())
    assert sum(isinstance(m, EpisodeBatchNorm2d) for m in modules) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)


def _reference(model, x, segments):
    """Every (episode, segment) through the net on its own: BatchNorm sees only those images."""
    return torch.stack([torch.cat([model(part[None])[0] for part in episode.split(segments)]) for episode in x])


@pytest.mark.parametrize("name", ["resnet12", "resnet18"])
def test_episode_norm_uses_each_episode_and_segment_statistics(name):
    model = _small(name).double()
    x = torch.rand(3, 5, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(model(x, (2, 3)), _reference(model, x, (2, 3)))


@pytest.mark.parametrize("name", ["resnet12", "resnet18"])
def test_episodes_do_not_leak_into_each_other(name):
    model = _small(name)
    x = torch.rand(2, 6, 3, 16, 16)
    changed = x.clone()
    changed[1] = torch.rand(6, 3, 16, 16)  # another episode 1
    changed[0, 3:] = torch.rand(3, 3, 16, 16)  # other query images in episode 0
    a, b = model(x, (3, 3)), model(changed, (3, 3))
    torch.testing.assert_close(a[0, :3], b[0, :3])  # episode 0's support features are unchanged
    assert not torch.allclose(a[0, 3:], b[0, 3:])


@pytest.mark.parametrize("name", ["resnet12", "resnet18"])
def test_episode_norm_is_the_same_in_train_and_eval_mode(name):
    model = _small(name)
    x = torch.rand(2, 4, 3, 16, 16)
    torch.testing.assert_close(model.train()(x, (1, 3)), model.eval()(x, (1, 3)))


@pytest.mark.parametrize("name", ["resnet12", "resnet18"])
def test_running_norm_tracks_and_uses_running_statistics(name):
    model = _small(name, norm="running")
    x = torch.rand(2, 4, 3, 16, 16) + 3
    train_out = model.train()(x)
    norms = [m for m in model.modules() if isinstance(m, EpisodeBatchNorm2d)]
    assert all(m.running_mean.abs().sum() > 0 for m in norms)  # every layer tracked its statistics
    assert not torch.allclose(train_out, model.eval()(x))
    # At evaluation an image's features no longer depend on the images beside it.
    torch.testing.assert_close(model(x)[:, :1], model(x[:, :1]))


def test_episode_norm_refuses_to_run_outside_a_backbone_call():
    model = _small("resnet18")
    model(torch.rand(1, 2, 3, 16, 16))  # the layout holds only during the call
    with pytest.raises(RuntimeError, match="episode_layout"):
        model.net(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("name", ["resnet12", "resnet18"])
def test_hypergradient_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    store = torch.randint(0, 256, (6, 4, 3, 16, 16), dtype=torch.uint8)
    episodes = EpisodeSampler(store, ways=2, shots=1, queries=2, seed=0).sample(2)
    task = HyperRepresentation(_small(name), ways=2, T=3, inner_lr=0.3)
    loss, _ = task.training_step(episodes)
    assert torch.isfinite(loss)
    for pname, p in task.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in task.backbone.parameters()) > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_config_composes_and_instantiates(backbone):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={backbone}"])
    model = instantiate(cfg.backbone, in_channels=3)
    assert model(torch.rand(1, 2, 3, 32, 32), (1, 1)).shape[:2] == (1, 2)
