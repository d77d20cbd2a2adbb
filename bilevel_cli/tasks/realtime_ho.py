"""Real-time hyperparameter optimization (RTHO, Franceschi et al. 2017): the learning rate, momentum and L2
coefficient of an MLP tuned by forward-mode hypergradients during ONE training run.

Inner variables: the MLP's weights, trained by heavy-ball momentum (the core's `momentum`, whose velocities are
part of the inner state) on minibatches of the training split. Outer variables λ: the three hyperparameters in
unconstrained form, log lr, logit momentum and log L2, so that whatever step the outer optimizer takes they stay
feasible. Outer loss E: the cross-entropy of the current weights on the validation split (or a minibatch of it).

A hyper-iteration runs Δ inner steps with `forward_step`, which carries the tangents Z = dw/dλ along, reads
dE/dλ = (∂E/∂w) Z with `forward_hypergradient` and leaves it in the .grad of λ; the engine's outer optimizer then
changes λ. Neither the weights nor the tangents are reset: the next Δ steps go on from where these stopped, so
Z is the derivative of the current weights along a shift of λ applied at every inner step so far, λ having
changed on the way. That is RTHO's hypergradient, and why it needs forward mode: reverse mode would have to keep
the whole run's trajectory. The weights, velocities and tangents are buffers and the step counters extra state,
so a checkpoint holds the run as it stands.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli import core
from bilevel_cli.errors import UserError
from bilevel_cli.tasks.base import Task

Tensors = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
TRAIN, VAL = 0, 1  # the random streams of training and validation minibatches


class RealTimeHO(Task):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, splits: tuple[int, int, int] = (50000, 10000, 10000),
                 hidden: tuple[int, ...] = (300,), batch: int = 100, val_batch: int | None = None, delta: int = 10,
                 lr: float = 0.1, momentum: float = 0.5, l2: float = 1e-4, seed: int = 0):
        """`images` uint8 (n, C, H, W) and `labels` (n,) are the labelled pool. The splits are consecutive slices
        of its order, training first, then validation, and the test split is the pool's LAST images, so that with
        MNIST (60000 training then 10000 test images) the test split is MNIST's own whatever the other two sizes.
        `val_batch` None: E on the whole validation split."""
        super().__init__()
        n_train, n_val, n_test = splits
        if min(splits) < 1 or n_train + n_val + n_test > len(images):
            raise UserError(f"splits {list(splits)} (train, val, test) need {sum(splits)} images, each split at least "
                            f"one, but the data set has {len(images)}; lower them")
        if not 1 <= batch <= n_train or not (val_batch is None or 1 <= val_batch <= n_val) or delta < 1:
            raise UserError(f"need 1 <= batch <= {n_train} (got {batch}), val_batch null or in [1, {n_val}] "
                            f"(got {val_batch}) and delta >= 1 (got {delta})")
        if not (lr > 0 and 0 < momentum < 1 and l2 > 0):
            raise UserError(f"need lr > 0, 0 < momentum < 1 and l2 > 0 (their logs and logit are the outer variables), "
                            f"got lr={lr}, momentum={momentum}, l2={l2}")
        self.batch, self.val_batch, self.delta, self.seed = batch, val_batch, delta, seed
        self.inner_steps = self.hyper_iterations = 0
        ranges = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (len(images) - n_test, len(images))}
        for name, (start, stop) in ranges.items():  # not persistent: the data are no part of a checkpoint
            self.register_buffer(f"{name}_images", images[start:stop], persistent=False)
            self.register_buffer(f"{name}_labels", labels[start:stop], persistent=False)
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))
        self.logit_momentum = nn.Parameter(torch.tensor(math.log(momentum / (1 - momentum))))
        self.log_l2 = nn.Parameter(torch.tensor(math.log(l2)))

        # The minibatch rides in the hparams that `step` hands the optimizer, beside λ: one optimizer serves all steps.
        self.inner = core.momentum(_inner_loss, lr="lr", momentum="momentum", weight_decay="l2")
        sizes = [images[0].numel(), *hidden, int(labels.max()) + 1]
        w0 = self.inner.init(_initial_weights(sizes, seed, images.device))
        self.state_keys = list(w0)
        # Buffer names cannot hold dots, and the tangents are a dict of dicts: "w/<key>" and "Z/<hparam>/<key>".
        for k, x in w0.items():
            self.register_buffer(f"w/{k}", x)
        for h, columns in core.tangents(w0, dict(self.named_parameters())).items():
            for k, z in columns.items():
                self.register_buffer(f"Z/{h}/{k}", z)

    def hyper_iteration(self, with_metrics: bool):
        t0, hparams = self.inner_steps, dict(self.named_parameters())
        batches = {t: self.minibatch(t) for t in range(t0, t0 + self.delta)}

        def step(w: Tensors, h: Tensors, t: int) -> Tensors:
            x, y = batches[t]
            return self.inner.step(w, {**self.hyperparameters(h), "x": x, "y": y}, t)

        w, Z = self.state(), self.tangents()
        for t in batches:
            w, Z = core.forward_step(step, w, Z, hparams, t)
        x, y = self.outer_batch(self.hyper_iterations)
        loss, grads = core.forward_hypergradient(lambda w, h: F.cross_entropy(_mlp(w, x), y), w, Z, hparams)
        torch.autograd.backward(list(hparams.values()), [grads[k] for k in hparams])
        self._store(w, Z)
        self.inner_steps, self.hyper_iterations = t0 + self.delta, self.hyper_iterations + 1
        if not with_metrics:
            return loss, None
        x, y = batches[t0 + self.delta - 1]
        with torch.no_grad():
            train_acc = 100 * (_mlp(w, x).argmax(1) == y).float().mean().item()
        return loss, {**self.current_hyperparameters(), "train_acc": train_acc}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        loss, accuracy = self._score(self.val_images, self.val_labels)
        return {"val_acc": accuracy, "val_loss": loss}

    @torch.no_grad()
    def test(self) -> dict:
        """Test accuracy of the current weights, and the hyperparameters they were trained with at the end."""
        loss, accuracy = self._score(self.test_images, self.test_labels)
        return {"test_acc": accuracy, "test_loss": loss, **self.current_hyperparameters(),
                "inner_steps": self.inner_steps}

    @staticmethod
    def hyperparameters(h: Tensors) -> Tensors:
        """λ in the inner optimizer's terms. Works on forward-mode dual tensors: the tangents flow through it."""
        return {"lr": h["log_lr"].exp(), "momentum": torch.sigmoid(h["logit_momentum"]), "l2": h["log_l2"].exp()}

    @torch.no_grad()
    def current_hyperparameters(self) -> dict[str, float]:
        return {k: v.item() for k, v in self.hyperparameters(dict(self.named_parameters())).items()}

    def minibatch(self, t: int) -> Batch:
        """The training minibatch of inner step t: a function of t and the seed alone, so a resumed run draws the
        ones the interrupted run would have drawn."""
        indices = _indices(len(self.train_labels), self.batch, t, self.seed, TRAIN, self.train_labels.device)
        return self._inputs(self.train_images[indices]), self.train_labels[indices]

    def outer_batch(self, k: int) -> Batch:
        """The validation examples of hyper-iteration k's outer loss: the whole split, or its k-th minibatch."""
        if self.val_batch is None:
            return self._inputs(self.val_images), self.val_labels
        indices = _indices(len(self.val_labels), self.val_batch, k, self.seed, VAL, self.val_labels.device)
        return self._inputs(self.val_images[indices]), self.val_labels[indices]

    def state(self) -> Tensors:
        """The inner state w: the MLP's weights and their velocities, under the core optimizer's names."""
        return {k: self.get_buffer(f"w/{k}") for k in self.state_keys}

    def tangents(self) -> dict[str, Tensors]:
        """Z = dw/dλ in the core's layout: for each hyperparameter, a (1, *shape) tensor per state key."""
        return {h: {k: self.get_buffer(f"Z/{h}/{k}") for k in self.state_keys} for h, _ in self.named_parameters()}

    def get_extra_state(self) -> dict:
        # Plain ints, not buffers: `step` needs t as a number, and a buffer on the GPU would cost a sync to read.
        return {"inner_steps": self.inner_steps, "hyper_iterations": self.hyper_iterations}

    def set_extra_state(self, state: dict) -> None:
        self.inner_steps, self.hyper_iterations = state["inner_steps"], state["hyper_iterations"]

    @torch.no_grad()
    def _store(self, w: Tensors, Z: dict[str, Tensors]) -> None:
        for k, x in w.items():
            self.get_buffer(f"w/{k}").copy_(x)
        for h, columns in Z.items():
            for k, z in columns.items():
                self.get_buffer(f"Z/{h}/{k}").copy_(z)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).to(self.log_lr.dtype) / 255

    def _score(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """(cross-entropy, accuracy in %) of the current weights on a whole split."""
        logits = _mlp(self.state(), self._inputs(images))
        return F.cross_entropy(logits, labels).item(), 100 * (logits.argmax(1) == labels).float().mean().item()


def _initial_weights(sizes: list[int], seed: int, device: torch.device) -> Tensors:
    """nn.Linear's default initialization, U(±1/√fan_in) for weights and biases, drawn from the seed alone."""
    g = torch.Generator().manual_seed(seed)
    w = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        bound = fan_in ** -0.5
        w[f"W{i}"] = ((2 * torch.rand(fan_out, fan_in, generator=g) - 1) * bound).to(device)
        w[f"b{i}"] = ((2 * torch.rand(fan_out, generator=g) - 1) * bound).to(device)
    return w


def _inner_loss(params: Tensors, hparams: Tensors) -> torch.Tensor:
    """Cross-entropy of the minibatch that `step` passes along in hparams as "x" and "y". The L2 term is the
    optimizer's weight decay, on every weight and bias."""
    return F.cross_entropy(_mlp(params, hparams["x"]), hparams["y"])


def _mlp(w: Tensors, x: torch.Tensor) -> torch.Tensor:
    """The ReLU MLP whose layer i is (W{i}, b{i}); entries with an '@' (the optimizer's buffers) are no layers."""
    depth = sum(1 for k in w if k.startswith("W") and "@" not in k)
    for i in range(depth):
        x = F.linear(x, w[f"W{i}"], w[f"b{i}"])
        x = F.relu(x) if i < depth - 1 else x
    return x


def _indices(n: int, size: int, index: int, seed: int, stream: int, device: torch.device) -> torch.Tensor:
    """Minibatch `index` of a stream of epochs over n examples: epoch e is a random order seeded by (seed, stream, e),
    cut into n // size minibatches (the rest of it left out). Drawn on `device`: no host sync."""
    epoch, position = divmod(index, n // size)
    # SeedSequence mixes the three into one 32-bit seed: the CPU generator keeps only the low 32 bits of a seed.
    g = torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, stream, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=g, device=device)[position * size:(position + 1) * size]
