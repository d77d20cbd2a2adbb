import pytest
import torch

from bilevel_cli.data.episodes import EpisodeSampler


def _coded_store(classes=12, per_class=10):
    """Image (c, i) is two pixels holding c and i, so a sampled image says where it came from."""
    c = torch.arange(classes)[:, None].expand(classes, per_class)
    i = torch.arange(per_class)[None, :].expand(classes, per_class)
    return torch.stack([c, i], dim=-1).to(torch.uint8).reshape(classes, per_class, 2, 1, 1)


def test_episodes_have_the_asked_shape_and_labels():
    episodes = EpisodeSampler(_coded_store(), ways=5, shots=2, queries=3, seed=0).sample(4)
    assert episodes.images.shape == (4, 5 * (2 + 3), 2, 1, 1) and episodes.images.dtype == torch.uint8
    assert episodes.segments == (10, 15)
    assert episodes.support_labels.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 4
    assert episodes.query_labels.tolist() == [[k for k in range(5) for _ in range(3)]] * 4


def test_labels_name_distinct_classes_and_support_and_query_are_disjoint():
    sampler = EpisodeSampler(_coded_store(), ways=5, shots=2, queries=3, seed=1)
    episodes = sampler.sample(50)
    classes, index = episodes.images[..., 0, 0, 0].long(), episodes.images[..., 1, 0, 0].long()
    labels = torch.cat([episodes.support_labels, episodes.query_labels], dim=1)
    for b in range(50):
        class_of_label = {}
        for c, label in zip(classes[b].tolist(), labels[b].tolist()):
            assert class_of_label.setdefault(label, c) == c  # one class per label
        assert len(set(class_of_label.values())) == 5  # N distinct classes
        assert episodes.classes[b].tolist() == [class_of_label[k] for k in range(5)]
        drawn = list(zip(classes[b].tolist(), index[b].tolist()))
        assert len(set(drawn)) == len(drawn)  # no image twice, so support and query are disjoint


def test_sampling_covers_the_store_and_is_seeded():
    store = _coded_store()
    a = EpisodeSampler(store, 5, 1, 2, seed=3).sample(200).images
    b = EpisodeSampler(store, 5, 1, 2, seed=3).sample(200).images
    c = EpisodeSampler(store, 5, 1, 2, seed=4).sample(200).images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a[..., 0, 0, 0].flatten().tolist()) == set(range(12))
    assert set(a[..., 1, 0, 0].flatten().tolist()) == set(range(10))


@pytest.mark.parametrize("ways, shots, queries, message", [
    (13, 1, 1, "13-way episodes need 13 classes but the split has 12"),
    (5, 6, 5, "need 11 images per class but the split has 10"),
])
def test_impossible_episodes_are_refused_with_the_fix(ways, shots, queries, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(_coded_store(), ways, shots, queries, seed=0)
