"""scikit-learn's bundled 8×8 digits, MNIST's offline stand-in."""

import sys

import pytest
import torch

from bilevel_cli.data.digits import load_digits
from bilevel_cli.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_shapes_and_dtypes(digits):
    assert set(digits) == {"images", "labels"}
    assert tuple(digits["images"].shape) == (1797, 1, 8, 8) and digits["images"].dtype == torch.uint8
    assert tuple(digits["labels"].shape) == (1797,) and digits["labels"].dtype == torch.int64


def test_pixels_scaled_from_0_16_to_0_255(digits):
    images = digits["images"]
    assert images.min() == 0 and images.max() == 255
    # The 17 levels 0..16, each times 255/16 rounded: 8 → 127.5 → 128, 16 → 255.
    assert images.unique().tolist() == [round(level * 255 / 16) for level in range(17)]


def test_labels_and_order_are_scikit_learns(digits):
    labels = digits["labels"]
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).min() >= 170  # about 180 of each digit
    assert labels[:10].tolist() == list(range(10))  # the bundled file starts with one of each digit in order
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    assert labels.tolist() == bunch.target.tolist()
    # Scaling back recovers scikit-learn's pixels exactly: the order and the 8×8 layout are kept.
    recovered = (digits["images"][:, 0].double() * 16 / 255).round()
    assert torch.equal(recovered, torch.from_numpy(bunch.images))


def test_deterministic(digits):
    again = load_digits()
    assert torch.equal(again["images"], digits["images"]) and torch.equal(again["labels"], digits["labels"])


def test_missing_scikit_learn_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail as if not installed
    with pytest.raises(UserError, match="pip install scikit-learn") as error:
        load_digits()
    assert "\n" not in str(error.value)
