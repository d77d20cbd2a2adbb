"""Hypergradients of an outer loss E(w_T(λ), λ) through T steps of inner dynamics w_{t+1} = Φ_t(w_t, λ).

Every method is one function with the same arguments,

    method(step, outer_loss, w0, hparams, T, **options) -> (outer_value, grads)

where `step(w, hparams, t)` is Φ_t on a dict of tensors, `outer_loss(w, hparams)` is E (its direct
dependence on λ counts), `w0` the initial inner state and `hparams` the outer variables λ, a dict of
tensors that require grad. `grads` has the keys of `hparams`. Nothing here keeps state, reads a
config, or logs.

`step` may be called under `torch.no_grad()` (for the steps a method does not differentiate through);
the inner optimizers of `bilevel_cli.core.optimizers` handle that. `forward`, `checkpointed` and the
implicit methods call it on states whose tensors are fresh autograd leaves (requires_grad, no history).

Three families: back-propagation through the unrolled steps (`reverse`, `truncated`, `first_order`,
`checkpointed`), forward propagation of tangents (`forward`), and the implicit function theorem at
w_T (`fixed_point`, `neumann`, `cg`). Two methods of their own modules read more of the inner dynamics than
`step` as a map, from the step objects of `bilevel_cli.core.optimizers`: `reversible` (Maclaurin et al. 2015)
reverses heavy-ball momentum in exact arithmetic instead of storing it, and `evograd` (Bohdal et al. 2021)
replaces the last step by an evolutionary one that needs first derivatives only.
"""

import math
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD

from bilevel_cli.core import autodiff as ad
from bilevel_cli.core.autodiff import Tensors
from bilevel_cli.core.evograd import evograd
from bilevel_cli.core.reversible import reversible

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
    return value.detach(), ad.grad(value, hparams)


def first_order(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int):
    """Drops the dependence of w_T on λ and keeps only the direct term ∂E/∂λ."""
    return truncated(step, outer_loss, w0, hparams, T, K=0)


def checkpointed(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int,
                 segment: int | None = None):
    """Exact reverse mode with checkpointing (Griewank & Walther 2000): a first pass without graph keeps
    only the state at the start of every `segment` steps (default ⌈√T⌉); the backward sweep then
    recomputes the segments, last first, each from its checkpoint and with its graph, and back-propagates
    the adjoint of the segment's end state through it. Time: 2T steps (T without graph, T with) and the
    backward passes of `reverse`; memory: ⌈T/segment⌉ states plus the graph of one segment, so ∝ √T at
    the default instead of ∝ T."""
    segment = max(1, math.ceil(math.sqrt(T))) if segment is None else segment
    if segment < 1:
        raise ValueError(f"checkpointed: segment must be >= 1, got segment={segment}")
    starts = range(0, T, segment)
    checkpoints, w = [], w0
    with torch.no_grad():
        for s in starts:
            checkpoints.append(w)
            w = unroll(step, w, hparams, min(s + segment, T), start=s)
    value, adjoint, grads = ad.outer_gradients(outer_loss, w, hparams)
    for s, w_s in zip(reversed(starts), reversed(checkpoints)):
        w_s = ad.leaves(w_s)
        w_end = unroll(step, w_s, hparams, min(s + segment, T), start=s)
        vjp = ad.vjp(w_end, adjoint, [*w_s.values(), *hparams.values()])
        adjoint = dict(zip(w_s, vjp[:len(w_s)]))
        grads = {k: g + d for (k, g), d in zip(grads.items(), vjp[len(w_s):])}
    return value, grads


def forward(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int):
    """Forward-mode hypergradient (Forward-HG, Franceschi et al. 2017): carries the tangents
    Z_t = dw_t/dλ through the T steps with `forward_step` and reads dE/dλ = (∂E/∂w_T) Z_T + ∂E/∂λ with
    `forward_hypergradient`. Time: one pass of the T steps per scalar hyperparameter (∝ T·dim λ); memory:
    the state, its dim λ tangents and one step's graph, whatever T. Suited to long horizons and few
    hyperparameters."""
    w, Z = w0, tangents(w0, hparams)
    for t in range(T):
        w, Z = forward_step(step, w, Z, hparams, t)
    return forward_hypergradient(outer_loss, w, Z, hparams)


def tangents(w: Tensors, hparams: Tensors) -> dict[str, Tensors]:
    """Z_0 = dw_0/dλ = 0: for each hyperparameter key, a (dim λ_key, *shape) tensor per state key."""
    return {key: {k: x.new_zeros(h.numel(), *x.shape) for k, x in w.items()} for key, h in hparams.items()}


def forward_step(step: Step, w: Tensors, Z: dict[str, Tensors], hparams: Tensors, t: int):
    """(w_{t+1}, Z_{t+1}) with Z_{t+1} = (∂Φ_t/∂w) Z_t + ∂Φ_t/∂λ, one forward-mode pass per scalar
    coordinate of λ. With real-time hyperparameter optimization (Franceschi et al. 2017, RTHO) λ may
    change between calls and Z goes on from where it was.

    Dual tensors rather than `torch.func.jvp`: the steps call `torch.autograd.grad`, which the torch.func
    transforms do not allow inside, while forward-mode tangents do propagate through it (forward over
    reverse). Under no_grad, with fresh leaves, no graph links the steps."""
    nxt, out = {}, {}  # w_{t+1} is the same primal in every pass; the last pass's is kept
    with torch.no_grad():
        for key, h in hparams.items():
            columns = {k: [] for k in w}
            for i in range(h.numel()):
                direction = torch.zeros(h.numel(), dtype=h.dtype, device=h.device)
                direction[i] = 1.0
                with fwAD.dual_level():
                    duals = {k: fwAD.make_dual(v.detach(), direction.view(h.shape)) if k == key else v.detach()
                             for k, v in hparams.items()}
                    state = {k: fwAD.make_dual(x.detach(), Z[key][k][i]) for k, x in w.items()}
                    for k, x in step(ad.leaves(state), duals, t).items():
                        primal, tangent = fwAD.unpack_dual(x)
                        columns[k].append(torch.zeros_like(primal) if tangent is None else tangent)
                        nxt[k] = primal
            out[key] = {k: torch.stack(c) for k, c in columns.items()}
        if not nxt:  # not one scalar hyperparameter: nothing to propagate, the step alone
            nxt = step(w, {k: v.detach() for k, v in hparams.items()}, t)
    return nxt, out


def forward_hypergradient(outer_loss: OuterLoss, w: Tensors, Z: dict[str, Tensors], hparams: Tensors):
    """(E(w, λ), dE/dλ = (∂E/∂w) Z + ∂E/∂λ) at a state w whose tangents Z = dw/dλ were carried forward."""
    value, dE_dw, direct = ad.outer_gradients(outer_loss, w, hparams)
    grads = {}
    for key, h in hparams.items():
        indirect = sum((Z[key][k] * dE_dw[k]).flatten(1).sum(1) for k in w) if w else 0.0
        grads[key] = direct[key] + torch.as_tensor(indirect, dtype=h.dtype, device=h.device).view(h.shape)
    return value, grads


def fixed_point(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int,
                iterations: int = 100, tol: float = 1e-10):
    """Implicit hypergradient at w_T by fixed-point iteration (Pineda 1987; Almeida 1987): treats the
    dynamics as a fixed point w = Φ(w, λ) (Φ the step that would come next, t = T) and solves
    v = (∂Φ/∂w)ᵀv + ∂E/∂w by iterating that map from v = ∂E/∂w, stopping after `iterations` updates or
    when one changes v by at most `tol`·‖v‖; then dE/dλ = ∂E/∂λ + (∂Φ/∂λ)ᵀv. Converges when ∂Φ/∂w is a
    contraction. Time: T steps without graph, one step with, one vector-Jacobian product per iteration;
    memory: one step's graph, whatever T."""
    _check_iterative(iterations, tol)
    return _implicit(step, outer_loss, w0, hparams, T, lambda jt, g: _iterate(jt, g, iterations, tol))


def neumann(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int, iterations: int = 20):
    """Implicit hypergradient at w_T with v truncated to the Neumann series Σ_{k=0}^{K} ((∂Φ/∂w)ᵀ)^k ∂E/∂w,
    K = `iterations` (Lorraine et al. 2020): the same sum as `fixed_point` after K updates, with no
    stopping test. Time: T steps without graph, one with, K vector-Jacobian products; memory: one step's
    graph, whatever T."""
    return fixed_point(step, outer_loss, w0, hparams, T, iterations=iterations, tol=0.0)


def cg(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int,
       iterations: int = 100, tol: float = 1e-10):
    """Implicit hypergradient at w_T with v from conjugate gradient on (I − ∂Φ/∂w)ᵀv = ∂E/∂w (Pedregosa
    2016; Rajeswaran et al. 2019), from v = 0, for at most `iterations` iterations or until the residual
    is at most `tol`·‖∂E/∂w‖. Valid when I − ∂Φ/∂w is symmetric positive definite, e.g. Φ a gradient step
    with a small enough learning rate on a strongly convex inner loss (not with momentum or Adam, whose
    Jacobian is not symmetric); it then converges in at most dim(w) iterations in exact arithmetic. Time
    and memory as `fixed_point`."""
    _check_iterative(iterations, tol)
    return _implicit(step, outer_loss, w0, hparams, T, lambda jt, g: _conjugate_gradient(jt, g, iterations, tol))


METHODS = {"reverse": reverse, "truncated": truncated, "first_order": first_order, "checkpointed": checkpointed,
           "forward": forward, "fixed_point": fixed_point, "neumann": neumann, "cg": cg, "reversible": reversible,
           "evograd": evograd}


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


def _implicit(step: Step, outer_loss: OuterLoss, w0: Tensors, hparams: Tensors, T: int, solve):
    """∂E/∂λ + (∂Φ/∂λ)ᵀv at w_T, with v = solve(v ↦ (∂Φ/∂w)ᵀv, ∂E/∂w) and Φ = step(·, λ, T)."""
    with torch.no_grad():
        w = ad.leaves(unroll(step, w0, hparams, T))
    value, dE_dw, direct = ad.outer_gradients(outer_loss, w, hparams)
    phi = step(w, hparams, T)
    v = solve(lambda u: dict(zip(w, ad.vjp(phi, u, list(w.values()), retain_graph=True))), dE_dw)
    indirect = ad.vjp(phi, v, list(hparams.values()))
    return value, {k: d + i for (k, d), i in zip(direct.items(), indirect)}


def _iterate(jt: Callable[[Tensors], Tensors], g: Tensors, iterations: int, tol: float) -> Tensors:
    """v ← jt(v) + g from v = g; after K updates v = Σ_{k=0}^{K} jt^k(g)."""
    v = g
    for _ in range(iterations):
        new = {k: u + g[k] for k, u in jt(v).items()}
        change = _norm({k: new[k] - v[k] for k in v})
        v = new
        if change <= tol * _norm(v):
            break
    return v


def _conjugate_gradient(jt: Callable[[Tensors], Tensors], g: Tensors, iterations: int, tol: float) -> Tensors:
    """Solves v − jt(v) = g by conjugate gradient from v = 0 (the operator must be symmetric positive definite)."""
    v = {k: torch.zeros_like(x) for k, x in g.items()}
    r, p = g, g
    rr, stop = _dot(g, g), tol * _norm(g)
    for _ in range(iterations):
        if rr.sqrt() <= stop:  # also ends at r = 0 exactly, before a division by zero
            break
        jp = jt(p)
        ap = {k: p[k] - jp[k] for k in p}
        alpha = rr / _dot(p, ap)
        v = {k: v[k] + alpha * p[k] for k in v}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rr, rr_old = _dot(r, r), rr
        p = {k: r[k] + (rr / rr_old) * p[k] for k in p}
    return v


def _check_iterative(iterations: int, tol: float) -> None:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got iterations={iterations}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got tol={tol}")


def _dot(a: Tensors, b: Tensors) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _norm(a: Tensors) -> torch.Tensor:
    return _dot(a, a).sqrt()
