"""Data hyper-cleaning (Franceschi et al. 2017, §5.1): learn one weight per training example so that a model
trained on the weighted, partly mislabelled training set does well on a small clean validation set.

Outer variables λ: the weights ω ∈ [0, 1]^n of the n training examples, kept in the box by projection after
every outer step (or, with `parametrization="sigmoid"`, ω = σ(λ) with λ free). Inner variables: a softmax
regression (W, b) from zero on the centred pixels, trained by T steps of the inner optimizer on the weighted
training cross-entropy (1/n) Σ_i ω_i ℓ_i. Outer loss: the validation cross-entropy of w_T. Examples whose weight ends below
`threshold` are the ones the method flags as mislabelled; the test scores them against the truth. Any hypergradient
method applies: `reversible` with the momentum inner optimizer, `evograd` with any.

The data are the first train + val + test examples of a labelled pool, in order (MNIST: the first 20000
training images as 5000 / 5000 / 10000), and `corrupted` of the training labels are replaced by another class,
drawn with `seed`. The same run also trains the two reference models of the 2017 paper: on all training
examples (the baseline, ω = 1) and on the clean ones only (the oracle).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.core import OPTIMIZERS, hypergradient, unroll
from bilevel_cli.errors import UserError
from bilevel_cli.tasks.base import Task

PARAMETRIZATIONS = ("projection", "sigmoid")


class HyperCleaning(Task):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: int, val: int, test: int, corrupted: int,
                 T: int, seed: int = 0, method: str = "reverse", method_options: dict | None = None,
                 inner: str = "gd", inner_lr: float = 1.0, inner_options: dict | None = None,
                 parametrization: str = "projection", threshold: float = 0.5):
        super().__init__()
        if train + val + test > len(labels):
            raise UserError(f"hyper-cleaning needs train + val + test = {train + val + test} examples but the data "
                            f"set has {len(labels)}; lower task.train, task.val or task.test")
        if not 0 <= corrupted <= train:
            raise UserError(f"task.corrupted must be in [0, task.train={train}], got {corrupted}")
        if parametrization not in PARAMETRIZATIONS:
            raise UserError(f"unknown task.parametrization {parametrization!r}; choose one of: "
                            f"{', '.join(PARAMETRIZATIONS)}")
        self.classes = int(labels.max()) + 1
        x = images[:train + val + test].flatten(1).float() / 255
        # Centred on the training mean: the mean image dominates the curvature (on MNIST the largest eigenvalue
        # of XᵀX/n drops from 37.7 to 5.2), so T steps at a 5× larger rate fit the model much further.
        x = x - x[:train].mean(0)
        y = labels[:train + val + test]
        generator = torch.Generator().manual_seed(seed)
        flipped = torch.randperm(train, generator=generator)[:corrupted].to(labels.device)
        shift = torch.randint(1, self.classes, (corrupted,), generator=generator).to(labels.device)
        y_train = y[:train].clone()
        y_train[flipped] = (y_train[flipped] + shift) % self.classes  # always another class
        is_corrupted = torch.zeros(train, dtype=torch.bool, device=labels.device)
        is_corrupted[flipped] = True
        # Non-persistent buffers: they follow .to(device, dtype), and checkpoints do not copy the data set.
        for name, tensor in zip(("x_train", "x_val", "x_test"), x.split([train, val, test])):
            self.register_buffer(name, tensor, persistent=False)
        for name, tensor in (("y_train", y_train), ("y_val", y[train:train + val]), ("y_test", y[train + val:]),
                             ("is_corrupted", is_corrupted)):
            self.register_buffer(name, tensor, persistent=False)
        self.T, self.method, self.method_options = T, method, dict(method_options or {})
        self.optimizer = OPTIMIZERS[inner](self._inner_loss, lr=inner_lr, **dict(inner_options or {}))
        self.parametrization, self.threshold = parametrization, threshold
        # Every example starts fully trusted: ω = 1 (σ(4) ≈ 0.98 under the sigmoid parametrization).
        start = 1.0 if parametrization == "projection" else 4.0
        self.omega = nn.Parameter(torch.full((train,), start, device=labels.device))

    def weights(self) -> torch.Tensor:
        """ω, the weight of each training example, in [0, 1]."""
        return self._weights(self.omega)

    def hyper_iteration(self, with_metrics: bool):
        # The hypergradient is taken in the weights, which the inner optimizer reads as they are, and carried into ω
        # through the parametrization here: methods that read the optimizer's step object (reversible learning,
        # EvoGrad) then get it unwrapped.
        weights = self.weights()
        loss, grads = hypergradient(self.optimizer.step, self._outer_loss, self._w0(), {"weights": weights}, self.T,
                                    self.method, **self.method_options)
        self.omega.grad, = torch.autograd.grad(weights, self.omega, grads["weights"])
        if not with_metrics:
            return loss, None
        with torch.no_grad():
            weights = self.weights()
            return loss, {"train_acc": self._accuracy(self._fit(weights), self.x_train, self.y_train),
                          "weight_clean": weights[~self.is_corrupted].mean().item(),
                          "weight_corrupted": weights[self.is_corrupted].mean().item(), **self._detection(weights)}

    def constrain(self) -> None:
        if self.parametrization == "projection":
            with torch.no_grad():
                self.omega.clamp_(0.0, 1.0)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        w = self._fit(self.weights())
        return {"val_acc": self._accuracy(w, self.x_val, self.y_val),
                "val_loss": F.cross_entropy(_logits(w, self.x_val), self.y_val).item()}

    @torch.no_grad()
    def test(self) -> dict:
        """Test accuracy of the hyper-cleaned model, of the baseline and of the oracle; precision, recall and
        F1 of the flagged examples against the corrupted ones."""
        weights = self.weights()
        fitted = {"": weights, "_baseline": torch.ones_like(weights), "_oracle": (~self.is_corrupted).float()}
        scores = {f"test_acc{name}": self._accuracy(self._fit(w), self.x_test, self.y_test)
                  for name, w in fitted.items()}
        return {**scores, **self._detection(weights), "flagged": int((weights < self.threshold).sum()),
                "corrupted": int(self.is_corrupted.sum())}

    def _weights(self, omega: torch.Tensor) -> torch.Tensor:
        return omega if self.parametrization == "projection" else torch.sigmoid(omega)

    def _inner_loss(self, w, hparams):
        losses = F.cross_entropy(_logits(w, self.x_train), self.y_train, reduction="none")
        return (hparams["weights"] * losses).mean()

    def _outer_loss(self, w, hparams):
        return F.cross_entropy(_logits(w, self.x_val), self.y_val)

    def _w0(self) -> dict[str, torch.Tensor]:
        x = self.x_train
        return self.optimizer.init({"W": x.new_zeros(x.shape[1], self.classes), "b": x.new_zeros(self.classes)})

    def _fit(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """w_T trained with fixed example weights."""
        with torch.no_grad():
            return unroll(self.optimizer.step, self._w0(), {"weights": weights}, self.T)

    def _detection(self, weights: torch.Tensor) -> dict[str, float]:
        flagged = weights < self.threshold
        hits = (flagged & self.is_corrupted).sum().item()
        precision = hits / max(int(flagged.sum()), 1)
        recall = hits / max(int(self.is_corrupted.sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    @staticmethod
    def _accuracy(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
        return 100 * (_logits(w, x).argmax(1) == y).float().mean().item()


def _logits(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.addmm(w["b"], x, w["W"])
