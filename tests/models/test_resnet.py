"""ResNet-12 and ResNet-18 specifics; what all backbones share is in test_backbones.py."""

import pytest
import torch
from torch import nn

from bilevel_cli.models import ResNet12, ResNet18
from bilevel_cli.models.batchnorm import EpisodeBatchNorm2d


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


def test_episode_norm_refuses_to_run_outside_a_backbone_call():
    model = _small("resnet18")
    model(torch.rand(1, 2, 3, 16, 16))  # the layout holds only during the call
    with pytest.raises(RuntimeError, match="episode_layout"):
        model.net(torch.rand(2, 3, 16, 16))


