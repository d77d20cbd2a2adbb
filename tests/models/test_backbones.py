"""What every backbone owes the few-shot tasks: per-episode BatchNorm, a hypergradient to every parameter,
and a config that instantiates."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.models import Conv4, ResNet12, ResNet18
from bilevel_cli.models.batchnorm import EpisodeBatchNorm2d
from bilevel_cli.tasks import HyperRepresentation

NAMES = ["conv4", "resnet12", "resnet18"]
CONFIGS = sorted(f.stem for f in (Path(CONFIG_DIR) / "backbone").glob("*.yaml"))


SIZE = 28  # conv4 needs it: at 16×16 its last maps are 1×1, and a one-image segment has no variance


def _small(name, **kwargs):
    """Narrow versions of the same structures (ResNet-18 has no width option: full width) on 3 channels."""
    torch.manual_seed(0)
    if name == "conv4":
        return Conv4(in_channels=3, channels=8, **kwargs)
    return ResNet12(channels=[4, 8, 8, 8], **kwargs) if name == "resnet12" else ResNet18(**kwargs)


def _reference(model, x, segments):
    """Every (episode, segment) through the net on its own: BatchNorm sees only those images."""
    return torch.stack([torch.cat([model(part[None])[0] for part in episode.split(segments)]) for episode in x])


@pytest.mark.parametrize("name", NAMES)
def test_episode_norm_uses_each_episode_and_segment_statistics(name):
    model = _small(name).double()
    x = torch.rand(3, 5, 3, SIZE, SIZE, dtype=torch.float64)
    torch.testing.assert_close(model(x, (2, 3)), _reference(model, x, (2, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_episodes_do_not_leak_into_each_other(name):
    model = _small(name)
    x = torch.rand(2, 6, 3, SIZE, SIZE)
    changed = x.clone()
    changed[1] = torch.rand(6, 3, SIZE, SIZE)  # another episode 1
    changed[0, 3:] = torch.rand(3, 3, SIZE, SIZE)  # other query images in episode 0
    a, b = model(x, (3, 3)), model(changed, (3, 3))
    torch.testing.assert_close(a[0, :3], b[0, :3])  # episode 0's support features are unchanged
    assert not torch.allclose(a[0, 3:], b[0, 3:])


@pytest.mark.parametrize("name", NAMES)
def test_episode_norm_is_the_same_in_train_and_eval_mode(name):
    model = _small(name)
    x = torch.rand(2, 4, 3, SIZE, SIZE)
    torch.testing.assert_close(model.train()(x, (1, 3)), model.eval()(x, (1, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_running_norm_tracks_and_uses_running_statistics(name):
    model = _small(name, norm="running")
    x = torch.rand(2, 4, 3, SIZE, SIZE) + 3
    train_out = model.train()(x)
    norms = [m for m in model.modules() if isinstance(m, EpisodeBatchNorm2d)]
    assert all(m.running_mean.abs().sum() > 0 for m in norms)  # every layer tracked its statistics
    assert not torch.allclose(train_out, model.eval()(x))
    # At evaluation an image's features no longer depend on the images beside it.
    torch.testing.assert_close(model(x)[:, :1], model(x[:, :1]))


@pytest.mark.parametrize("name", NAMES)
def test_hypergradient_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    store = torch.randint(0, 256, (6, 4, 3, SIZE, SIZE), dtype=torch.uint8)
    episodes = EpisodeSampler(store, ways=2, shots=1, queries=2, seed=0).sample(2)
    task = HyperRepresentation(_small(name), ways=2, T=3, inner_lr=0.3)
    loss, _ = task.training_step(episodes)
    assert torch.isfinite(loss)
    for pname, p in task.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in task.backbone.parameters()) > 0


@pytest.mark.parametrize("config", CONFIGS)
def test_every_backbone_config_composes_and_instantiates(config):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={config}"])
    model = instantiate(cfg.backbone, in_channels=3)
    assert model(torch.rand(1, 2, 3, 32, 32), (1, 1)).shape[:2] == (1, 2)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="episode, running"):
        Conv4(norm="group")
