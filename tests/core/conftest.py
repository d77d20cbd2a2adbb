"""Shared data for the tests of `bilevel_cli.core`: small float64 problems built from fixed seeds.

Every tensor is created with an explicit dtype; the global default dtype is never changed.
"""

import pytest
import torch

DTYPE = torch.float64


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


@pytest.fixture
def ridge_data() -> dict[str, torch.Tensor]:
    """Least squares: a 20×5 training set (X, y) and a 15×5 validation set (Xv, yv), seed 0."""
    gen = torch.Generator().manual_seed(0)
    X, w_true = _randn(gen, 20, 5), _randn(gen, 5)
    y = X @ w_true + 0.5 * _randn(gen, 20)
    Xv = _randn(gen, 15, 5)
    yv = Xv @ w_true + 0.5 * _randn(gen, 15)
    return {"X": X, "y": y, "Xv": Xv, "yv": yv}


@pytest.fixture
def classification_data() -> dict[str, torch.Tensor]:
    """Three classes, four features: 20 training (X, y) and 15 validation (Xv, yv) examples, seed 1."""
    gen = torch.Generator().manual_seed(1)
    W_true = _randn(gen, 4, 3)
    X, Xv = _randn(gen, 20, 4), _randn(gen, 15, 4)
    y = (X @ W_true + 0.7 * _randn(gen, 20, 3)).argmax(dim=1)
    yv = (Xv @ W_true + 0.7 * _randn(gen, 15, 3)).argmax(dim=1)
    return {"X": X, "y": y, "Xv": Xv, "yv": yv}
