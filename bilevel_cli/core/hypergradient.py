"""Hypergradients of an outer loss E(w_T(λ), λ) through T steps of inner dynamics w_{t+1} = Φ_t(w_t, λ).

Every method is one function with the same arguments,

    method(step, outer_loss, w0, hparams, T, **options) -> (outer_value, grads)

where `step(w, hparams, t)` is Φ_t on a dict of tensors, `outer_loss(w, hparams)` is E (its direct
dependence on λ counts), `w0` the initial inner state and `hparams` the outer variables λ, a dict of
tensors that require grad. `grads` has the keys of `hparams`. Nothing here keeps state, reads a
config, or logs.

`step` may be called under `torch.no_grad()` (for the steps a method does not differentiate through);
the inner optimizers of `bilevel_cli.core.optimizers` handle that.
"""

from typing import Callable

import torch

Tensors = dict[str, torch.Tensor]
Step = Callable[[Tensors, Tensors, int], Tensors]
OuterLoss = Callable[[Tensors, Tensors], torch.Tensor]


def reverse(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int):
    """Exact hypergradient: back-propagation through all T steps (memory grows with T)."""
    return truncated(step, outer_loss, w0, hparams, T, K=T)


def truncated(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int, K: int):
    """Back-propagation through the last K steps only; w_{T-K} is treated as a constant
    (truncated back-propagation, Shaban et al. 2019). K=T is `reverse`, K=0 is `first_order`."""
    if not 0 <= K <= T:
        raise ValueError(f"truncated: K must be in [0, T={T}], got K={K}")
    with torch.no_grad():
        w = unroll(step, w0, hparams, T - K)
    w = unroll(step, w, hparams, T, start=T - K)
    value = outer_loss(w, hparams)
    return value.detach(), _grad(value, hparams)


def first_order(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int):
    """Drops the dependence of w_T on λ and keeps only the direct term ∂E/∂λ."""
    return truncated(step, outer_loss, w0, hparams, T, K=0)


METHODS = {"reverse": reverse, "truncated": truncated, "first_order": first_order}


def hypergradient(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int,
                  method: str = "reverse", **options):
    """dE(w_T(λ), λ)/dλ by `method` (one of METHODS); returns (outer_value, grads by hparams key)."""
    if method not in METHODS:
        raise ValueError(f"unknown hypergradient method {method!r}; choose one of {', '.join(METHODS)}")
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")
    frozen = [k for k, v in hparams.items() if not v.requires_grad]
    if frozen:
        raise ValueError(f"hparams {frozen} do not require grad; call .requires_grad_() on them "
                         "or pass them to `step` by closure")
    return METHODS[method](step, outer_loss, w0, hparams, T, **options)


def unroll(step: Step, w: Tensors, hparams: Tensors, T: int, start: int = 0) -> Tensors:
    """w_T from w_start: runs steps start, ..., T-1 (differentiable unless under torch.no_grad())."""
    for t in range(start, T):
        w = step(w, hparams, t)
    return w


def _grad(value: torch.Tensor, hparams: Tensors) -> Tensors:
    if not value.requires_grad:  # e.g. first_order with an outer loss that has no direct term
        return {k: torch.zeros_like(v) for k, v in hparams.items()}
    grads = torch.autograd.grad(value, list(hparams.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(hparams.items(), grads)}
