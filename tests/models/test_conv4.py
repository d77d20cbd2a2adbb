import pytest
import torch

from bilevel_cli.models import Conv4


@pytest.mark.parametrize("kwargs, shape, features", [
    (dict(in_channels=1, channels=64, pool=False), (28, 28), 256),  # the authors' Omniglot net
    (dict(in_channels=3, channels=32, pool=True), (84, 84), 800),  # the authors' MiniImagenet net
])
def test_feature_sizes_match_the_paper(kwargs, shape, features):
    out = Conv4(**kwargs)(torch.rand(2, 6, kwargs["in_channels"], *shape), (1, 5))
    assert out.shape == (2, 6, features)
