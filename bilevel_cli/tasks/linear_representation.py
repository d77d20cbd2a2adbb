"""The effect of T (Franceschi et al., ICML 2018, the paper's first experiment): a linear hyper-representation.

One classification problem of `classes` classes drawn from a class-split image store, each class's drawings
split into `train_per_class` training, `val_per_class` validation and `test_per_class` test images (the paper:
100 Omniglot classes, 3 / 3 / 15; Omniglot has only 20 drawings a class, so by default the test images are
the rest, 14).

Outer variables λ: a matrix H (pixels → d) applied to the flattened pixels x in [0, 1] (centred on the training
mean by default), so the features are x H. Inner variables: a linear classifier (W, b) on those features,
starting at zero and trained by T steps of an inner optimizer (gradient descent by default) on the training
images, with inner loss

    L(W, b) = mean_i ℓ(f_i W + b, y_i) + (ρ/2)‖W‖²        (ρ = `ridge`; b is not penalized)

and ℓ either the cross-entropy (`loss="cross_entropy"`, softmax regression) or half the squared Euclidean
distance to the one-hot target, ½‖f_i W + b − e_{y_i}‖² (`loss="squared"`, ridge regression of one-hot targets).
The outer loss E is the mean of the same ℓ over the validation images, without penalty: it depends on H through
w_T and directly through the validation features.

The squared loss gives the inner problem a minimizer in closed form, the solution of the linear system
(ΦᵀΦ/n + ρ·diag(1, …, 1, 0)) [W; bᵀ] = ΦᵀY/n, with Φ = [F, 1] the training features with a column of ones and
Y the one-hot targets. `exact=True` uses it (torch.linalg.solve, differentiable) instead of the T steps: that is
the exact bilevel problem whose value f the T-step values f_T should approach as T grows, and T plays no part.

Every split is used whole at every hyper-iteration (no sampling). The T steps run on the features, which the
core sees as outer variables; autograd carries their hypergradient into H.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.core import OPTIMIZERS, hypergradient, unroll
from bilevel_cli.tasks.base import Task

LOSSES = ("cross_entropy", "squared")
SPLITS = ("train", "val", "test")


class LinearRepresentation(Task):
    def __init__(self, store: torch.Tensor, T: int, classes: int = 100, train_per_class: int = 3,
                 val_per_class: int = 3, test_per_class: int | None = None, dim: int = 64, loss: str = "cross_entropy",
                 exact: bool = False, ridge: float = 1e-3, centre: bool = True, init_std: float = 0.01,
                 method: str = "reverse", method_options: dict | None = None, inner: str = "gd",
                 inner_lr: float = 0.1, learn_lr: bool = False, inner_options: dict | None = None, seed: int = 0,
                 init_seed: int = 0):
        """`store`: uint8 images (available classes, per_class, C, H, W). `seed` picks the classes and splits
        each class's drawings; `init_seed` draws H ~ N(0, init_std²). `test_per_class=None`: the drawings left."""
        super().__init__()
        available, per_class = store.shape[:2]
        test_per_class = per_class - train_per_class - val_per_class if test_per_class is None else test_per_class
        counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if exact and loss != "squared":
            raise ValueError("exact=True solves the squared-loss inner problem in closed form; set loss='squared'")
        if not 2 <= classes <= available:
            raise ValueError(f"classes must be in [2, {available}] (the store's classes), got {classes}")
        if min(counts.values()) < 1 or sum(counts.values()) > per_class:
            raise ValueError(f"train, val and test images per class must be >= 1 and sum to at most the store's "
                             f"{per_class} per class, got {train_per_class}, {val_per_class}, {test_per_class}")
        self.T, self.classes, self.loss, self.exact, self.ridge = T, classes, loss, exact, ridge
        self.method, self.method_options = method, dict(method_options or {})
        self.inner, self.inner_options = inner, dict(inner_options or {})
        # A learned rate is an outer variable (an entry of hparams); a fixed one stays a number.
        self.inner_lr = nn.Parameter(torch.tensor(float(inner_lr))) if learn_lr else float(inner_lr)

        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(available, generator=generator)[:classes]
        order = torch.rand(classes, per_class, generator=generator).argsort(1)  # each class's drawings shuffled
        pixels = store[chosen[:, None].to(store.device), order.to(store.device)].flatten(2).float() / 255
        mean = pixels[:, :train_per_class].mean((0, 1)) if centre else 0.0
        start = 0
        for split, count in counts.items():
            # Not persistent: the data are rebuilt from the store and the seed, checkpoints keep only λ.
            self.register_buffer(f"x_{split}", (pixels[:, start:start + count] - mean).flatten(0, 1), persistent=False)
            labels = torch.arange(classes, device=store.device).repeat_interleave(count)
            self.register_buffer(f"y_{split}", labels, persistent=False)
            start += count
        init = torch.Generator().manual_seed(init_seed)
        self.H = nn.Parameter(torch.randn(pixels.shape[-1], dim, generator=init) * init_std)

    def problem(self, features: dict[str, torch.Tensor]):
        """The T-step bilevel problem on given training and validation features, as the core's
        (step, outer_loss, w0, hparams); the features are entries of hparams."""
        def inner_loss(w, hp):
            return self.criterion(_linear(w, hp["train"]), self.y_train) + self.ridge / 2 * w["W"].square().sum()

        def outer_loss(w, hp):
            return self.criterion(_linear(w, hp["val"]), self.y_val)

        learned = isinstance(self.inner_lr, nn.Parameter)
        optimizer = OPTIMIZERS[self.inner](inner_loss, lr="lr" if learned else self.inner_lr, **self.inner_options)
        train = features["train"]
        w0 = optimizer.init({"W": train.new_zeros(train.shape[1], self.classes), "b": train.new_zeros(self.classes)})
        hparams = {**features, **({"lr": self.inner_lr} if learned else {})}
        return optimizer.step, outer_loss, w0, hparams

    def hyper_iteration(self, with_metrics: bool):
        features = {split: self.features(split) for split in ("train", "val")}
        if self.exact:
            loss = self.criterion(_linear(self.solve(features["train"]), features["val"]), self.y_val)
            loss.backward()
            loss = loss.detach()
        else:
            leaves = {split: f.detach().requires_grad_() for split, f in features.items()}
            step, outer_loss, w0, hparams = self.problem(leaves)
            loss, grads = hypergradient(step, outer_loss, w0, hparams, self.T, self.method, **self.method_options)
            outer = [(f, grads[split]) for split, f in features.items()]
            if "lr" in grads:
                outer.append((self.inner_lr, grads["lr"]))
            torch.autograd.backward(*zip(*outer))
        if not with_metrics:
            return loss, None
        train = self.evaluate(["train"])["train"]
        metrics = {"train_acc": train["acc"], "train_loss": train["loss"]}
        if isinstance(self.inner_lr, nn.Parameter):
            metrics["inner_lr"] = self.inner_lr.item()
        return loss, metrics

    def validate(self) -> dict[str, float]:
        val = self.evaluate(["val"])["val"]
        return {"val_acc": val["acc"], "val_loss": val["loss"]}

    def test(self) -> dict:
        """Accuracy and loss of the classifier fitted on the training images at the current H, on every split;
        `outer_objective` is E(H), the validation loss: f_T(H), or f(H) when exact."""
        scores = self.evaluate(SPLITS)
        return {"test_acc": scores["test"]["acc"], "test_loss": scores["test"]["loss"],
                "outer_objective": scores["val"]["loss"], "val_acc": scores["val"]["acc"],
                "train_acc": scores["train"]["acc"], "T": self.T, "exact": self.exact, "loss": self.loss,
                "classes": self.classes, "dim": self.H.shape[1]}

    @torch.no_grad()
    def evaluate(self, splits) -> dict[str, dict[str, float]]:
        """Accuracy (%) and mean loss ℓ on each split of the classifier fitted on the training images."""
        w = self.fit(self.features("train"))
        out = {}
        for split in splits:
            scores, labels = _linear(w, self.features(split)), getattr(self, f"y_{split}")
            out[split] = {"acc": 100 * (scores.argmax(1) == labels).float().mean().item(),
                          "loss": self.criterion(scores, labels).item()}
        return out

    def fit(self, train: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inner solution on training features `train`: w_T, or the closed form when exact."""
        if self.exact:
            return self.solve(train)
        step, _, w0, hparams = self.problem({"train": train})
        w = unroll(step, w0, hparams, self.T)
        return {"W": w["W"], "b": w["b"]}

    def solve(self, train: torch.Tensor) -> dict[str, torch.Tensor]:
        """The minimizer of the squared-loss inner problem (see the module docstring), differentiable in `train`."""
        n, d = train.shape
        phi = torch.cat([train, train.new_ones(n, 1)], 1)
        penalty = torch.cat([train.new_full((d,), self.ridge), train.new_zeros(1)])
        targets = F.one_hot(self.y_train, self.classes).to(train.dtype)
        w = torch.linalg.solve(phi.T @ phi / n + torch.diag(penalty), phi.T @ targets / n)
        return {"W": w[:d], "b": w[d]}

    def features(self, split: str) -> torch.Tensor:
        return getattr(self, f"x_{split}") @ self.H

    def criterion(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over examples of ℓ: the cross-entropy, or ½‖scores − one-hot‖²."""
        if self.loss == "cross_entropy":
            return F.cross_entropy(scores, labels)
        return (scores - F.one_hot(labels, self.classes).to(scores.dtype)).square().sum(1).mean() / 2


def _linear(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Class scores x (n, d) @ W (d, classes) + b (classes)."""
    return torch.addmm(w["b"], x, w["W"])
