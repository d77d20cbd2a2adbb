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


def _reference(model, x, segments):
    """Every (episode, segment) through the net on its own: BatchNorm sees only those images."""
    rows = []
    for episode in x:
        parts = episode.split(segments)
        rows.append(torch.cat([model(part[None])[0] for part in parts]))
    return torch.stack(rows)


def test_episode_norm_uses_each_episode_and_segment_statistics():
    torch.manual_seed(0)
    model = Conv4(channels=8).double()
    x = torch.rand(3, 7, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x, (2, 5)), _reference(model, x, (2, 5)))


def test_episodes_do_not_leak_into_each_other():
    torch.manual_seed(0)
    model = Conv4(channels=8)
    x = torch.rand(2, 6, 1, 28, 28)
    changed = x.clone()
    changed[1] = torch.rand(6, 1, 28, 28)  # another episode 1
    changed[0, 3:] = torch.rand(3, 1, 28, 28)  # other query images in episode 0
    a, b = model(x, (3, 3)), model(changed, (3, 3))
    torch.testing.assert_close(a[0, :3], b[0, :3])  # episode 0's support features are unchanged
    assert not torch.allclose(a[0, 3:], b[0, 3:])


def test_episode_norm_is_the_same_in_train_and_eval_mode():
    model = Conv4(channels=8)
    x = torch.rand(2, 6, 1, 28, 28)
    torch.testing.assert_close(model.train()(x, (1, 5)), model.eval()(x, (1, 5)))


def test_running_norm_uses_running_statistics_at_evaluation():
    model = Conv4(channels=8, norm="running")
    x = torch.rand(2, 6, 1, 28, 28) + 3
    train_out = model.train()(x)
    assert model.norms[0].running_mean.abs().sum() > 0  # the statistics were tracked
    assert not torch.allclose(train_out, model.eval()(x))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="episode, running"):
        Conv4(norm="group")
