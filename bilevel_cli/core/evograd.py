"""EvoGrad (Bohdal, Yang & Hospedales, NeurIPS 2021): a hypergradient with first derivatives only.

The last of the T inner steps is an evolutionary one. From θ = w_{T−1} (the first T − 1 steps run without a graph),
K copies θ_k = θ + σ·ε_k, ε_k ~ N(0, I), are weighted by p = softmax(−L_{T−1}(θ_k, λ)/τ), L_t the inner objective
of step t, and averaged: w_T = Σ_k p_k·θ_k. The outer loss E(w_T, λ) is differentiated with respect to λ through the
weights p only, the copies being constants: no derivative of L in w is ever taken, let alone a second one.

For small σ/τ and many copies, w_T ≈ θ − (σ²/τ)·∇_θ L and the estimate points along the hypergradient of one
gradient step of rate σ²/τ from θ (the earlier steps' dependence on λ is dropped, as in `first_order`). Time: T − 1
steps without graph, K evaluations of L and one backward pass through them; memory: K copies of the parameters and
the graphs of the K values of L, whatever T.
"""

from typing import Callable

import torch

from bilevel_cli.core import autodiff as ad
from bilevel_cli.core.autodiff import Tensors


def evograd(step, outer_loss: Callable, w0: Tensors, hparams: Tensors, T: int, K: int = 2, sigma: float = 1e-3,
            tau: float = 0.05, seed: int | None = None):
    """EvoGrad's hypergradient (see the module docstring). `step` must carry its inner objective, as the steps of
    `gd`, `momentum` and `adam` do; only the parameters are perturbed (the optimizer's buffers of w_{T−1} are kept).
    K copies, noise scale σ and temperature τ are the paper's (its defaults: 2, 0.001, 0.05). The noise is drawn from
    torch's default generator, or with `seed` from one seeded with it (the same draw at every call)."""
    objective = getattr(step, "objective", None)
    if objective is None:
        raise ValueError("evograd needs the inner objective: a step built by bilevel_cli.core.gd, momentum or adam")
    if K < 1 or sigma <= 0 or tau <= 0:
        raise ValueError(f"evograd: K must be >= 1 and sigma, tau > 0, got K={K}, sigma={sigma}, tau={tau}")
    with torch.no_grad():
        w = w0
        for t in range(T - 1):
            w = step(w, hparams, t)
        w = {k: x.detach() for k, x in w.items()}
    if T > 0:
        w = {**w, **_evolve(objective, w, hparams, T - 1, K, sigma, tau, seed)}
    value = outer_loss(w, hparams)
    return value.detach(), ad.grad(value, hparams)


def _evolve(objective: Callable, w: Tensors, hparams: Tensors, t: int, K: int, sigma: float, tau: float,
            seed: int | None) -> Tensors:
    """Σ_k softmax(−L_t(θ_k, λ)/τ)_k·θ_k over K perturbed copies θ_k of the parameters of w, differentiable in λ."""
    params = {k: x for k, x in w.items() if "@" not in k}
    device = next(iter(params.values())).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    copies = {k: x + sigma * torch.randn((K, *x.shape), generator=generator, dtype=x.dtype, device=device)
              for k, x in params.items()}
    with torch.enable_grad():
        losses = torch.stack([objective({k: c[i] for k, c in copies.items()}, hparams, t) for i in range(K)])
        weights = torch.softmax(-losses / tau, dim=0)
        return {k: torch.tensordot(weights.to(c.dtype), c, dims=1) for k, c in copies.items()}

