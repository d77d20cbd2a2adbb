"""Differentiable inner optimizers: each builds an `InnerOptimizer(init, step)` for a loss L(params, hparams).

The inner state w is a flat dict of tensors: the parameters under their own names, and the optimizer's
buffers under `"<name>@<buffer>"` (a velocity, Adam's moments), so that the hypergradient flows through
them too. Every hyperparameter (lr, momentum, weight decay) is either a number or the name of an entry
of `hparams`, in which case it is an outer variable and receives a hypergradient.

Under `torch.no_grad()` a step returns plain tensors (no graph); otherwise it keeps the graph of the
inner gradient (create_graph) so that `hypergradient` can differentiate through it.

Where ∇L has a closed form (a linear or softmax-regression head, say), pass it as `gradient(params, hparams)`:
the steps then use it instead of autograd, and differentiating through them needs no double backward.

A learning rate, momentum or weight decay that changes with the step is a `Schedule(name)`: the hparam `name` has
shape (T,) and step t reads its entry t, so that each step's value gets its own hypergradient.

Each optimizer's `step` is an `InnerStep`, a callable that also keeps the inner objective (which EvoGrad samples);
heavy-ball momentum's is a `MomentumStep`, which also exposes the gradient, learning rate and momentum of step t
(which reversible learning runs in exact arithmetic).
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import torch

from bilevel_cli.core.autodiff import Tensors

Loss = Callable[[Tensors, Tensors], torch.Tensor]
Gradient = Callable[[Tensors, Tensors], Tensors]
Value = float | torch.Tensor


class Schedule(NamedTuple):
    """A hyperparameter with one value per step: step t reads entry t of the hparam `name`, of shape (T,)."""
    name: str


Hyper = float | str | Schedule


@dataclass(frozen=True)
class InnerStep:
    """Φ_t of an inner optimizer, called as step(w, hparams, t) -> next state, with the objective it descends beside
    it: objective(params, hparams, t) = L(params, hparams) + ½·weight_decay·‖params‖²."""
    update: Callable[[Tensors, Tensors, int], Tensors]
    objective: Callable[[Tensors, Tensors, int], torch.Tensor]

    def __call__(self, w: Tensors, hparams: Tensors, t: int) -> Tensors:
        return self.update(w, hparams, t)


@dataclass(frozen=True)
class MomentumStep(InnerStep):
    """Heavy-ball momentum's step v ← μ_t·v + g_t(w), w ← w − η_t·v, with its parts: gradient(params, hparams, t)
    is g_t = ∇L + weight_decay·params (differentiable when grad mode is on), lr(hparams, t) is η_t and
    momentum(hparams, t) is μ_t."""
    gradient: Callable[[Tensors, Tensors, int], Tensors]
    lr: Callable[[Tensors, int], Value]
    momentum: Callable[[Tensors, int], Value]


class InnerOptimizer(NamedTuple):
    init: Callable[[Tensors], Tensors]  # parameters -> initial inner state (parameters + buffers)
    step: InnerStep  # (state, hparams, t) -> next state


def gd(loss: Loss, lr: Hyper, weight_decay: Hyper = 0.0, gradient: Gradient | None = None) -> InnerOptimizer:
    """Gradient descent: w ← w − lr·(∇L(w) + weight_decay·w)."""
    _check_range(weight_decay=(weight_decay, 0, None))

    def step(w: Tensors, hparams: Tensors, t: int) -> Tensors:
        eta, grads = _value(lr, hparams, t), _gradient(loss, w, hparams, t, weight_decay, gradient)
        return {k: w[k] - eta * g for k, g in grads.items()}

    return InnerOptimizer(dict, InnerStep(step, _objective(loss, weight_decay)))


def momentum(loss: Loss, lr: Hyper, momentum: Hyper = 0.9, weight_decay: Hyper = 0.0,
             gradient: Gradient | None = None) -> InnerOptimizer:
    """Heavy-ball momentum: v ← μ·v + ∇L(w); w ← w − lr·v (PyTorch's SGD convention)."""
    _check_range(momentum=(momentum, 0, 1), weight_decay=(weight_decay, 0, None))

    def init(params: Tensors) -> Tensors:
        return {**params, **{f"{k}@velocity": torch.zeros_like(p) for k, p in params.items()}}

    def full_gradient(params: Tensors, hparams: Tensors, t: int) -> Tensors:
        return _gradient(loss, params, hparams, t, weight_decay, gradient)

    def step(w: Tensors, hparams: Tensors, t: int) -> Tensors:
        eta, mu = _value(lr, hparams, t), _value(momentum, hparams, t)
        out = {}
        for k, g in full_gradient(w, hparams, t).items():
            v = mu * w[f"{k}@velocity"] + g
            out[k], out[f"{k}@velocity"] = w[k] - eta * v, v
        return out

    return InnerOptimizer(init, MomentumStep(step, _objective(loss, weight_decay), full_gradient,
                                             partial(_value, lr), partial(_value, momentum)))


def adam(loss: Loss, lr: Hyper, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: Hyper = 0.0, eps_root: float = 1e-16, gradient: Gradient | None = None) -> InnerOptimizer:
    """Adam with bias correction. `eps_root` inside the square root keeps its derivative finite
    where a gradient coordinate is exactly zero (sqrt has an infinite slope at 0)."""
    b1, b2 = betas
    if not all(0 <= b < 1 for b in betas):  # at 1 the bias correction divides by zero
        raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
    _check_range(eps=(eps, 0, None), weight_decay=(weight_decay, 0, None), eps_root=(eps_root, 0, None))

    def init(params: Tensors) -> Tensors:
        zeros = {f"{k}@{m}": torch.zeros_like(p) for k, p in params.items() for m in ("m", "v")}
        return {**params, **zeros}

    def step(w: Tensors, hparams: Tensors, t: int) -> Tensors:
        eta, out = _value(lr, hparams, t), {}
        for k, g in _gradient(loss, w, hparams, t, weight_decay, gradient).items():
            m = b1 * w[f"{k}@m"] + (1 - b1) * g
            v = b2 * w[f"{k}@v"] + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
            out[k] = w[k] - eta * m_hat / ((v_hat + eps_root).sqrt() + eps)
            out[f"{k}@m"], out[f"{k}@v"] = m, v
        return out

    return InnerOptimizer(init, InnerStep(step, _objective(loss, weight_decay)))


OPTIMIZERS = {"gd": gd, "momentum": momentum, "adam": adam}


def _value(x: Hyper, hparams: Tensors, t: int) -> Value:
    if isinstance(x, Schedule):
        return hparams[x.name][t]
    return hparams[x] if isinstance(x, str) else x


def _objective(loss: Loss, weight_decay: Hyper) -> Callable[[Tensors, Tensors, int], torch.Tensor]:
    """L(params, hparams) + ½·weight_decay·‖params‖²: the function whose gradient `_gradient` returns."""
    def objective(params: Tensors, hparams: Tensors, t: int) -> torch.Tensor:
        wd = _value(weight_decay, hparams, t)
        value = loss(params, hparams)
        return value + 0.5 * sum((wd * p.square()).sum() for p in params.values()) if _nonzero(wd) else value

    return objective


def _gradient(loss: Loss, w: Tensors, hparams: Tensors, t: int, weight_decay: Hyper,
              gradient: Gradient | None) -> Tensors:
    """∇_params L + weight_decay·params, differentiable (create_graph) when grad mode is on; from `gradient`
    when it is given, by autograd otherwise."""
    params = {k: p for k, p in w.items() if "@" not in k}
    if gradient is not None:
        grads = list(gradient(params, hparams).values())
    else:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # The initial state is usually a constant; autograd needs a leaf to differentiate at.
            leaves = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
            grads = torch.autograd.grad(loss(leaves, hparams), list(leaves.values()), create_graph=create_graph,
                                        allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
    wd = _value(weight_decay, hparams, t)
    return {k: g + wd * w[k] if _nonzero(wd) else g for (k, g) in zip(params, grads)}


def _check_range(**values: tuple[Hyper, float, float | None]) -> None:
    """Each number in [low, high] (high None: no bound); an hparam name or a Schedule is the outer loop's to keep."""
    for name, (x, low, high) in values.items():
        if isinstance(x, (int, float)) and not (low <= x and (high is None or x <= high)):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be {bound}, got {x}")


def _nonzero(x) -> bool:
    return isinstance(x, torch.Tensor) or x != 0
